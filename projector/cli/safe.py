r"""Producer text made harmless for the operator's terminal.

Everything a producer sends (execution ids, step names, statuses, errors, context, NATS subjects,
rejection reasons that quote the input) can hold characters that drive a terminal instead of
being shown: ESC starts CSI (cursor, colour, erase), OSC (window title, clipboard, hyperlinks) and
DCS sequences; CR and BS overwrite what is on screen; the C1 controls U+0080..U+009F are the
8-bit forms of the same sequences. Rich markup is a second way in: ``[link=...]`` in a string
that rich parses becomes an OSC 8 hyperlink.

:func:`escape` writes every such character visibly as ``\uXXXX`` (ESC becomes ``\u001b``):

* the C0 controls U+0000..U+001F (tab and newline too, unless ``newlines=True`` keeps them where
  the layout needs them: multi-line error cells, tracebacks), DEL U+007F and the C1 controls;
* the Unicode bidirectional controls (U+061C, U+200E, U+200F, U+202A..U+202E, U+2066..U+2069),
  which reorder what is shown, and the line and paragraph separators U+2028 / U+2029;
* lone surrogates (U+D800..U+DFFF, from JSON such as ``"\ud800"``), which cannot be written to a
  UTF-8 stream at all.

A backslash is left as it is, so ``\u001b`` typed by a producer looks the same as an escaped
ESC; the point is that neither reaches the terminal as a control.

Rendering producer text: :func:`text` (a rich ``Text``: escaped, never parsed as markup) for table
cells and anything printed through rich; :func:`markup` inside a rich markup string; :func:`escape`
for plain ``print``. :func:`error_text` is the line printed for an exception (escaped, and with
credentials removed by :func:`projector.redact.redact`). :class:`SafeFormatter` does both for
every log record the command line writes.
"""

from __future__ import annotations

import logging
import re
import sys

from rich.markup import escape as _markup_escape
from rich.text import Text

from ..redact import redact

__all__ = ["SafeFormatter", "error_text", "escape", "guard_logging", "markup", "text"]

_UNSAFE = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 except tab and newline, DEL, C1
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidirectional controls
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff"  # lone surrogates
    "\ufffe\uffff"  # noncharacters XML refuses (an SVG with one does not parse)
)
_UNSAFE_KEEP_LAYOUT = re.compile(f"[{_UNSAFE}]")
_UNSAFE_ALL = re.compile(f"[\t\n{_UNSAFE}]")


def _visible(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def escape(value: object, *, newlines: bool = False) -> str:
    """`value` as text with every character that could drive a terminal written as ``\\uXXXX``.

    Tab and newline are escaped too unless `newlines` is true.
    """
    s = value if isinstance(value, str) else str(value)
    pattern = _UNSAFE_KEEP_LAYOUT if newlines else _UNSAFE_ALL
    return pattern.sub(_visible, s) if pattern.search(s) else s


def text(value: object, style: str = "", *, newlines: bool = False) -> Text:
    """`value` as a rich ``Text`` for a table cell or ``print``: escaped, never read as markup.

    None becomes an empty cell.
    """
    return Text("" if value is None else escape(value, newlines=newlines), style=style)


def markup(value: object) -> str:
    """`value` escaped for a place inside a rich markup string (``[`` cannot open a tag)."""
    return _markup_escape(escape(value))


def error_text(exc: BaseException) -> str:
    """What the command line prints for `exc`: credentials redacted, controls escaped (newlines
    kept: messages from PostgreSQL carry a DETAIL or HINT line)."""
    message = str(exc) or type(exc).__name__
    return escape(redact(message), newlines=True)


class SafeFormatter(logging.Formatter):
    """Wraps a formatter: the lines it produces have credentials redacted and controls escaped.

    A newline in a record (a multi-line driver message, a traceback) is kept, and the lines after
    it are indented, so text inside a record cannot pose as a record of its own.
    """

    def __init__(self, inner: logging.Formatter | None = None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        line = escape(redact(self.inner.format(record)), newlines=True)
        return line.replace("\n", "\n  ")


def guard_logging(logger: logging.Logger | None = None) -> None:
    """Put a :class:`SafeFormatter` around the formatter of every handler of `logger` (the root
    logger by default) that writes to standard error: the command line's own. Handlers already
    guarded, and handlers writing elsewhere (an application's, a test runner's), are left alone.
    """
    for handler in (logger or logging.getLogger()).handlers:
        writes_stderr = isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr
        if writes_stderr and not isinstance(handler.formatter, SafeFormatter):
            handler.setFormatter(SafeFormatter(handler.formatter))
