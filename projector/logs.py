r"""Log lines as JSON: ``--log-format json`` (``PROJECTOR_LOG_FORMAT=json``).

:class:`JsonFormatter` writes each record as one JSON object on one line: ``time`` (UTC, ISO 8601
with milliseconds), ``level``, ``logger``, ``message``, then the record's extra fields (``extra=``
of the logging call, e.g. ``events_projected``, ``lag_seconds``), and ``exception`` with the
traceback when there is one. Every string in it has credentials redacted
(:func:`projector.redact.redact`) before it is encoded, and the line is ASCII: every control and
every non-ASCII character is a JSON ``\uXXXX`` escape, so no producer text can drive a terminal
and the command line's :class:`~projector.cli.safe.SafeFormatter`, which passes over it again,
finds nothing to change.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any, Final

from .redact import redact

__all__ = ["TEXT_FORMAT", "JsonFormatter"]

#: The format of the text log lines.
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: The attributes every LogRecord has: anything else on a record came with ``extra=``.
_STANDARD: Final = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def _clean(value: Any) -> Any:
    """`value` made safe: strings redacted, containers walked, the rest as JSON
    has it (anything JSON cannot hold becomes its text)."""
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, dict):
        return {str(_clean(str(k))): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return _clean(str(value))


class JsonFormatter(logging.Formatter):
    """One JSON object a line (module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC)
        doc: dict[str, Any] = {
            "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in doc:
                doc[key] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        return json.dumps(_clean(doc), ensure_ascii=True, separators=(",", ":"))
