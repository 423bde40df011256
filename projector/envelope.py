"""The `ExecutorEvent` envelope: one event emitted by a noetl executor, worker or CLI.

The model accepts every spelling noetl producers use on the wire and normalises it:

* the Rust seed's serde JSON (`execution_id`, `event_type`, `step`, `status`, `created_at` in
  RFC 3339 with `Z` and up to nanoseconds, `context`);
* the later crate's integer `execution_id` / `event_id`, optional `worker_id` and `meta`, and
  `payload` as an alias of `context`;
* the Python `report_event` payload: `name` (= `event_type`), `node_name` / `node_id` (= `step`),
  `payload` (= `context`), `meta`, `worker_id`.

Integer ids become their exact decimal strings (63-bit snowflakes included; floats and booleans are
rejected so that no id passes through a float). A naive `created_at` is read as UTC and an offset is
converted to UTC; sub-microsecond digits are truncated (PostgreSQL keeps microseconds).

Top-level fields the envelope does not know are never dropped: they are kept in
`meta["unknown_fields"]`.

Derived event ids
-----------------
When a producer sends no `event_id`, :meth:`ExecutorEvent.resolved_event_id` derives one from the
content, so the same envelope emitted twice is the same row: the first 32 hex digits of the
SHA-256 of the canonical JSON (keys sorted, no spaces, UTF-8) of the object
``{"execution_id", "event_type", "step", "status", "created_at", "context", "worker_id", "meta"}``,
with ``created_at`` written as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``, prefixed with ``sha256:``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "ENVELOPE_FIELDS",
    "MAX_JSON_DEPTH",
    "ExecutorEvent",
    "canonical_json",
    "format_timestamp",
]

JsonValue = Any

#: The envelope's own field names, in wire order.
ENVELOPE_FIELDS = (
    "execution_id",
    "event_id",
    "event_type",
    "step",
    "status",
    "created_at",
    "context",
    "worker_id",
    "meta",
)

# Aliases, in order of precedence after the canonical name.
_ALIASES: dict[str, tuple[str, ...]] = {
    "event_type": ("name",),
    "step": ("node_name", "node_id"),
    "context": ("payload",),
}
_OPTIONAL_ON_WIRE = frozenset({"event_id", "worker_id", "meta", "status"})
UNKNOWN_FIELDS_KEY = "unknown_fields"
_CANONICAL = frozenset(ENVELOPE_FIELDS)
_ZERO = timedelta(0)


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, the form chrono's `DateTime<Utc>` reads."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: JsonValue) -> str:
    """Deterministic JSON text: sorted keys, no insignificant white space, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _text_problem(value: str, path: str) -> str | None:
    if "\x00" in value:
        return f"{path} contains a NUL character (U+0000), which PostgreSQL rejects"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"{path} contains a lone surrogate, which is not valid UTF-8"
    return None


def _plain_json(value: JsonValue, max_depth: int | None = None) -> bool:
    """True when `value` is surely storable as jsonb (a fast check; False means "look closer"),
    and, with `max_depth`, surely nested no deeper than that."""
    if not value:
        return value is None or value == {} or value == [] or value == "" or value == 0
    try:
        dumped = orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):  # non-JSON types, lone surrogates, huge integers
        return False  # (and nesting deeper than orjson's 254 levels)
    # orjson writes NaN and infinities as null, and U+0000 as an escape: both need a closer look.
    if b"null" in dumped or b"\\u0000" in dumped:
        return False
    # Nesting `max_depth` + 1 levels deep takes that many brackets, and twice as many bytes.
    return (
        max_depth is None
        or len(dumped) <= 2 * max_depth
        or dumped.count(b"[") + dumped.count(b"{") <= max_depth
    )


#: How deeply `context` and `meta` may nest (arrays and objects inside one another; `{}` is one
#: level). Deeper input is rejected: the JSON parser stops at this depth inside an envelope, so
#: anything deeper could be neither read from the wire nor read back once written.
MAX_JSON_DEPTH = 200


def _depth_problem(value: JsonValue, path: str) -> str | None:
    """Why `value` is nested too deeply to store (None when it is not); iterative, so that any
    depth is measured without recursion."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if not isinstance(item, dict | list | tuple):
            continue
        if depth > MAX_JSON_DEPTH:
            return (
                f"{path} is nested more than {MAX_JSON_DEPTH} levels deep (arrays and objects "
                "inside one another), deeper than the sink stores"
            )
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children)
    return None


def _json_problem(value: JsonValue, path: str) -> str | None:
    """Why `value` cannot be stored as jsonb (None when it can): non-JSON types, NaN, U+0000."""
    if value is None or isinstance(value, bool | int):
        return None
    if isinstance(value, str):
        return _text_problem(value, path)
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{path} is {value}, which JSON cannot hold"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{path} has a non-string key {key!r}"
            problem = _json_problem(key, f"{path} key") or _json_problem(item, f"{path}.{key}")
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{i}]")
            if problem:
                return problem
        return None
    return f"{path} holds a {type(value).__name__}, which is not JSON"


def _respell(data: Mapping[str, Any]) -> dict[str, Any]:
    """Map aliases to canonical names; keep unknown fields and losing aliases in meta."""
    out: dict[str, Any] = {}
    used: set[str] = set()
    for name in ENVELOPE_FIELDS:
        for key in (name, *_ALIASES.get(name, ())):
            if key in data:
                out[name] = data[key]
                used.add(key)
                break
    # Unknown fields, and aliases that lost to another spelling, are content: keep them.
    unknown = {k: v for k, v in data.items() if k not in used}
    if unknown:
        meta = out.get("meta")
        if meta is None:
            meta = {}
        if not isinstance(meta, Mapping):
            raise ValueError("meta must be a JSON object or null")
        meta = dict(meta)
        kept = meta.get(UNKNOWN_FIELDS_KEY)
        if kept is not None and not isinstance(kept, Mapping):
            raise ValueError(f"meta.{UNKNOWN_FIELDS_KEY} is reserved for unknown fields")
        meta[UNKNOWN_FIELDS_KEY] = {**(kept or {}), **unknown}
        out["meta"] = meta
    return out


def _id_text(value: object, field: str, *, optional: bool) -> str | None:
    if value is None:
        if optional:
            return None
        raise ValueError(f"{field} is required")
    if isinstance(value, (bool, float)):
        raise ValueError(f"{field} must be a string or an integer, not {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{field} must not be empty")
        return value
    raise ValueError(f"{field} must be a string or an integer, not {type(value).__name__}")


class ExecutorEvent(BaseModel):
    """One execution event, as stored in `noetl.event` (one column per field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    execution_id: str = Field(description="Execution id; integers become exact decimal strings.")
    event_id: str | None = Field(
        default=None,
        description="Producer's event id; derived from the content by the sinks when absent.",
    )
    event_type: str = Field(
        description="Event type, e.g. `command.completed` (`name` on the wire)."
    )
    step: str = Field(default="", description="Step name (`node_name`/`node_id` on the wire).")
    status: str | None = Field(default=None, description="Status exactly as sent.")
    created_at: datetime = Field(description="When the event was produced, always UTC.")
    context: JsonValue = Field(default_factory=dict, description="Free-form JSON (`payload`).")
    worker_id: str | None = None
    meta: dict[str, JsonValue] | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_spellings(cls, data: object) -> object:
        if not isinstance(data, Mapping):
            raise ValueError(f"an envelope must be a JSON object, not {type(data).__name__}")
        # The common case, canonical names only, takes no detour: this runs once per event.
        out = dict(data) if _CANONICAL.issuperset(data) else _respell(data)
        execution_id = out.get("execution_id")
        if type(execution_id) is not str or not execution_id.strip():
            out["execution_id"] = _id_text(execution_id, "execution_id", optional=False)
        event_id = out.get("event_id")
        if event_id is not None and (type(event_id) is not str or not event_id.strip()):
            out["event_id"] = _id_text(event_id, "event_id", optional=True)
        if out.get("step") is None:
            out["step"] = ""
        if "created_at" in out and not isinstance(out["created_at"], str | datetime):
            raise ValueError("created_at must be an RFC 3339 timestamp string")
        return out

    @field_validator("event_type")
    @classmethod
    def _event_type_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("event_type must not be empty")
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        tz = value.tzinfo
        if tz is UTC:
            return value
        if tz is None:
            return value.replace(tzinfo=UTC)
        # `Z` parses to pydantic's own zero-offset tzinfo: replacing it is much cheaper than
        # astimezone(), which calls back into that tzinfo.
        if value.utcoffset() == _ZERO:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _storable(self) -> ExecutorEvent:
        # PostgreSQL text and jsonb cannot hold U+0000 and JSON has no NaN: reject such input
        # here, naming the field, rather than fail a whole batch in the database. Fast checks
        # first; the field-by-field walk only runs when one of them is not conclusive.
        texts = "".join(
            (
                self.execution_id,
                self.event_type,
                self.step,
                self.event_id or "",
                self.status or "",
                self.worker_id or "",
            )
        )
        suspects: list[str] = []
        if "\x00" in texts or not texts.isascii():
            suspects += ["execution_id", "event_id", "event_type", "step", "status", "worker_id"]
        if not _plain_json(self.context, MAX_JSON_DEPTH):
            suspects.append("context")
        if self.meta is not None and not _plain_json(self.meta, MAX_JSON_DEPTH):
            suspects.append("meta")
        for name in suspects:
            value = getattr(self, name)
            # The depth first: the walk below recurses once per level.
            problem = _depth_problem(value, name) or _json_problem(value, name)
            if problem:
                raise ValueError(problem)
        return self

    @field_serializer("created_at")
    def _ser_created_at(self, value: datetime) -> str:
        return format_timestamp(value)

    @model_serializer(mode="wrap")
    def _omit_absent(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # The Rust crate omits absent optional fields; so do we (context is always written).
        data: dict[str, Any] = handler(self)
        for name in _OPTIONAL_ON_WIRE:
            if data.get(name) is None:
                data.pop(name, None)
        return data

    @classmethod
    def parse_json(cls, raw: bytes | str) -> ExecutorEvent:
        """`model_validate_json(raw)`, about 3x faster for the canonical form.

        JSON with canonical field names, ids and texts as strings, `created_at` written
        `YYYY-MM-DDTHH:MM:SS.ffffffZ` (what `model_dump_json`, `StdoutEventSink` and
        `NatsEventSink` write) and no `\\u` escape, `NaN` or `Infinity` anywhere is checked here
        and built without pydantic's validators. Anything else, and anything invalid, goes
        through `model_validate_json`: the result, and the errors, are the same either way.
        """
        event = _parse_canonical(cls, raw)
        return event if event is not None else cls.model_validate_json(raw)

    def content(self) -> dict[str, JsonValue]:
        """The envelope as a JSON-ready dict without `event_id`: what a derived id hashes."""
        return {
            "execution_id": self.execution_id,
            "event_type": self.event_type,
            "step": self.step,
            "status": self.status,
            "created_at": format_timestamp(self.created_at),
            "context": self.context,
            "worker_id": self.worker_id,
            "meta": self.meta,
        }

    def resolved_event_id(self) -> str:
        """`event_id` when the producer sent one, else the content-derived id (module docstring)."""
        if self.event_id is not None:
            return self.event_id
        digest = hashlib.sha256(canonical_json(self.content()).encode("utf-8")).hexdigest()
        return "sha256:" + digest[:32]

    def with_event_id(self) -> ExecutorEvent:
        """This envelope with `event_id` filled in (itself when it already has one)."""
        if self.event_id is not None:
            return self
        return self.model_copy(update={"event_id": self.resolved_event_id()})


def _parse_canonical(cls: type[ExecutorEvent], raw: bytes | str) -> ExecutorEvent | None:
    """The envelope in `raw` when it is in the canonical form (see `ExecutorEvent.parse_json`),
    checked exactly as the validators would; None to let pydantic decide."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    # \u escapes may hide U+0000 or lone surrogates; NaN and Infinity are not JSON (the parser
    # below would take them). Text that merely contains these bytes just takes the slow path.
    if _SLOW_PATH_BYTES.search(data) is not None:
        return None
    try:
        d = pydantic_core.from_json(data)  # keeps integers beyond 64 bits exact, as pydantic does
    except ValueError:
        return None
    if type(d) is not dict or not _CANONICAL.issuperset(d):
        return None
    execution_id = d.get("execution_id")
    event_type = d.get("event_type")
    event_id = d.get("event_id")
    step = d.get("step")
    status = d.get("status")
    worker_id = d.get("worker_id")
    meta = d.get("meta")
    created_at = d.get("created_at")
    if (
        type(execution_id) is not str
        or not execution_id.strip()
        or type(event_type) is not str
        or not event_type.strip()
        or (event_id is not None and (type(event_id) is not str or not event_id.strip()))
        or (step is not None and type(step) is not str)
        or (status is not None and type(status) is not str)
        or (worker_id is not None and type(worker_id) is not str)
        or (meta is not None and type(meta) is not dict)
        or type(created_at) is not str
        or _CANONICAL_TIMESTAMP.fullmatch(created_at) is None
    ):
        return None
    context = d.get("context", {})
    # What `_storable` checks: numbers out of float range parse as infinities (JSON has no NaN),
    # integers beyond 64 bits need the exact path; either makes `_plain_json` say "look closer".
    if not _plain_json(context) or (meta is not None and not _plain_json(meta)):
        return None
    try:
        when = datetime.fromisoformat(created_at)
    except ValueError:
        return None
    if when.tzinfo is not UTC:
        return None
    values = {
        "execution_id": execution_id,
        "event_id": event_id,
        "event_type": event_type,
        "step": "" if step is None else step,
        "status": status,
        "created_at": when,
        "context": context,
        "worker_id": worker_id,
        "meta": meta,
    }
    # What `model_construct` does, without its per-field bookkeeping (7 us an event).
    event = cls.__new__(cls)
    _set(event, "__dict__", values)
    _set(event, "__pydantic_fields_set__", {*d, "step"})
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


_set = object.__setattr__
_SLOW_PATH_BYTES = re.compile(rb"\\u|NaN|Infinity")
# Exactly `format_timestamp`'s form: anything else (other precisions, offsets, ISO week dates that
# `datetime.fromisoformat` would take) is left to pydantic.
_CANONICAL_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z"
)
