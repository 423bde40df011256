"""The `ExecutorEvent` envelope: one event emitted by a noetl executor, worker or CLI.

The model accepts every spelling noetl producers use on the wire and normalises it:

* the Rust seed's serde JSON (`execution_id`, `event_type`, `step`, `status`, `created_at` in
  RFC 3339 with `Z` and up to nanoseconds, `context`);
* the later crate's integer `execution_id` / `event_id`, optional `worker_id` and `meta`, and
  `payload` as an alias of `context`;
* the Python `report_event` payload: `name` (= `event_type`), `node_name` / `node_id` (= `step`),
  `payload` (= `context`), `meta`, `worker_id`;
* upstream's event store and materializer: `event_time` and `timestamp` (= `created_at`).

The first spelling present wins (canonical name first, then the aliases in the order above); a
field that is `null` counts as absent, so it never blocks an alias. Integer ids are kept as
:class:`IntegerId`, a `str` subclass holding the exact decimal string (63-bit snowflakes included;
floats and booleans are rejected so that no id passes through a float): it compares, hashes and is
stored as that string, and is written back to JSON as an integer. An empty `status` (what the Rust
struct holds for "none") is no status. `created_at` must be an RFC 3339 / ISO 8601 date-time
(``T`` or a space between date and time, seconds optional, a fraction of any length truncated to
microseconds, ``Z`` or an offset, or none: naive times are UTC); digits-only strings, bare dates
and date-times whose conversion to UTC leaves the representable range are rejected with the
field's name.

Top-level fields the envelope does not know, and aliases that lost to another spelling, are never
dropped: they are kept in `meta["unknown_fields"]`. Duplicate keys in one JSON object are
rejected by :meth:`ExecutorEvent.parse_json` with the key's name (a JSON parser would silently keep
the last).

JSON out (`model_dump_json`) is what the Rust structs read: ids in the JSON type they arrived in,
`status` always (``""`` for none), `created_at` in UTC with ``Z``, absent optional fields left out,
and never an id this project derived (:class:`DerivedId`): an envelope that arrived without an id
leaves without one, and its reader derives the same id from the same content.

Derived event ids
-----------------
When a producer sends no `event_id`, :meth:`ExecutorEvent.resolved_event_id` derives one, so the
same envelope emitted twice is the same row:

* with upstream's `idempotency_key` (a top-level field, kept in `meta.unknown_fields`): the first
  32 hex digits of the SHA-256 of the canonical JSON (keys sorted, no spaces, UTF-8) of
  ``{"execution_id", "idempotency_key"}``, prefixed with ``sha256:``;
* otherwise from the content: the same digest of the canonical JSON of the object
  ``{"execution_id", "event_type", "step", "status", "created_at", "context", "worker_id",
  "meta"}``, with ``created_at`` written as ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.

Identical id-less envelopes of one source (a file, a NATS message) are distinct events (a parallel
fan-out issues many identical `command.issued` in the same microsecond): the reader counts each
content's occurrences (:class:`Occurrences`), and the n-th one for n >= 2 hashes the same object
with ``"occurrence": n`` added. The first keeps the plain content id, so what `StdoutEventSink`
writes reads back to the same ids.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from array import array
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import orjson
import pydantic_core
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "ENVELOPE_FIELDS",
    "MAX_JSON_DEPTH",
    "DerivedId",
    "ExecutorEvent",
    "IntegerId",
    "Occurrences",
    "ParsedRaw",
    "canonical_json",
    "canonical_values",
    "event_from",
    "format_timestamp",
    "invalid",
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
    "created_at": ("event_time", "timestamp"),
    "context": ("payload",),
}
_OPTIONAL_ON_WIRE = ("event_id", "worker_id", "meta")
UNKNOWN_FIELDS_KEY = "unknown_fields"
#: Upstream's idempotency field: when present and `event_id` is absent, the id's source.
IDEMPOTENCY_KEY = "idempotency_key"
_CANONICAL = frozenset(ENVELOPE_FIELDS)
_ZERO = timedelta(0)


class IntegerId(str):
    """An id that arrived as a JSON integer: equal to, hashed and stored as its exact decimal
    string, and written back to JSON as an integer."""

    __slots__ = ()


class DerivedId(str):
    """An event id this project derived (module docstring): stored, never written to JSON."""

    __slots__ = ()


def format_timestamp(value: datetime) -> str:
    """RFC 3339 in UTC with microseconds and a ``Z``, the form chrono's `DateTime<Utc>` reads."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def canonical_json(value: JsonValue) -> str:
    """Deterministic JSON text: sorted keys, no insignificant white space, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _digest_id(value: JsonValue) -> DerivedId:
    digest = hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()
    return DerivedId("sha256:" + digest[:32])


def invalid(reason: str, loc: tuple[str | int, ...] = ()) -> ValidationError:
    """A pydantic `ValidationError` saying `reason` (at `loc`), as the model's own errors do."""
    return ValidationError.from_exception_data(
        "ExecutorEvent",
        [{"type": "value_error", "loc": loc, "input": None, "ctx": {"error": ValueError(reason)}}],
    )


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
    """Map aliases to canonical names (a null spelling counts as absent); keep unknown fields and
    losing aliases in meta."""
    out: dict[str, Any] = {}
    used: set[str] = set()
    for name in ENVELOPE_FIELDS:
        spellings = (name, *_ALIASES.get(name, ()))
        for key in spellings:
            if data.get(key) is not None:
                out[name] = data[key]
                used.add(key)
                break
        else:
            for key in spellings:
                if key in data:  # only nulls: the field is present, and null
                    out[name] = None
                    used.update(k for k in spellings if k in data)
                    break
        # A null spelling that lost to another one carries nothing: it is not kept.
        used.update(k for k in spellings if k in data and data[k] is None)
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


def _id_value(value: object, field: str = "") -> str:
    """An id as stored: a string as it is, an integer as :class:`IntegerId` (the error names
    `field`; pydantic puts the field name in front of the validators' errors itself)."""
    name = f"{field} " if field else ""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{name}must not be empty")
        return value
    if isinstance(value, bool | float) or not isinstance(value, int):
        raise ValueError(f"{name}must be a string or an integer, not {type(value).__name__}")
    return IntegerId(value)


def _execution_id(value: object) -> str:
    if value is None:
        raise ValueError("is required")
    return _id_value(value)


def _event_id(value: object) -> str | None:
    return None if value is None else _id_value(value)


# RFC 3339 / ISO 8601 date-times (what pydantic then parses): date, `T` or a space, hours and
# minutes, optional seconds and fraction, optional `Z` or offset. No week dates, no bare dates,
# no digits-only epoch numbers.
_DATE_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?"
    r"(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})?"
)


def check_timestamp_text(value: str, field: str = "created_at") -> None:
    """Raise ValueError (naming `field`, if any) unless `value` is an RFC 3339 / ISO 8601
    date-time."""
    if _DATE_TIME.fullmatch(value) is None:
        shown = value if len(value) <= 40 else value[:40] + "..."
        raise ValueError(
            f"{field + ' ' if field else ''}must be an RFC 3339 date-time such as "
            f"2026-01-20T11:56:27.292930Z, not {shown!r}"
        )


def to_utc(value: datetime, field: str = "created_at") -> datetime:
    """`value` in UTC (naive: read as UTC); ValueError (naming `field`, if any) when UTC cannot
    hold it."""
    tz = value.tzinfo
    if tz is UTC:
        return value
    if tz is None:
        return value.replace(tzinfo=UTC)
    # `Z` parses to pydantic's own zero-offset tzinfo: replacing it is much cheaper than
    # astimezone(), which calls back into that tzinfo.
    offset = value.utcoffset()
    if offset == _ZERO:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{field + ' ' if field else ''}{value.isoformat()} is outside the range of "
            "representable date-times once converted to UTC"
        ) from None


class ExecutorEvent(BaseModel):
    """One execution event, as stored in `noetl.event` (one column per field)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=False)

    execution_id: Annotated[
        str, PlainValidator(_execution_id, json_schema_input_type=str | int)
    ] = Field(description="Execution id; integers are kept exactly (`IntegerId`).")
    event_id: Annotated[
        str | None, PlainValidator(_event_id, json_schema_input_type=str | int | None)
    ] = Field(
        default=None,
        description="Producer's event id; derived from the content by the sinks when absent.",
    )
    event_type: str = Field(
        description="Event type, e.g. `command.completed` (`name` on the wire)."
    )
    step: str = Field(default="", description="Step name (`node_name`/`node_id` on the wire).")
    status: str | None = Field(default=None, description='Status as sent; `""` is none.')
    created_at: datetime = Field(description="When the event was produced, always UTC.")
    context: JsonValue = Field(default_factory=dict, description="Free-form JSON (`payload`).")
    worker_id: str | None = None
    meta: dict[str, JsonValue] | None = None

    @model_validator(mode="before")
    @classmethod
    def _accept_spellings(cls, data: object, info: ValidationInfo) -> object:
        if not isinstance(data, Mapping):
            raise ValueError(f"an envelope must be a JSON object, not {type(data).__name__}")
        # The common case, canonical names only, takes no detour: this runs once per event.
        out = dict(data) if _CANONICAL.issuperset(data) else _respell(data)
        if info.context:
            _fill_execution_id(out, info.context.get("execution_id"))
        if out.get("execution_id") is None:
            raise ValueError("execution_id is required")
        if out.get("step") is None:
            out["step"] = ""
        if out.get("status") == "":
            out["status"] = None
        return out

    @field_validator("event_type")
    @classmethod
    def _event_type_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("event_type must not be empty")
        return value

    @field_validator("created_at", mode="before")
    @classmethod
    def _date_time_text(cls, value: object) -> object:
        if isinstance(value, str):
            check_timestamp_text(value, "")
        elif not isinstance(value, datetime):
            raise ValueError("must be an RFC 3339 date-time string")
        return value

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return to_utc(value, "")

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

    @field_serializer("execution_id", "event_id", when_used="json")
    def _ser_id(self, value: str | None) -> str | int | None:
        return int(value) if type(value) is IntegerId else value

    @model_serializer(mode="wrap")
    def _rust_struct_fields(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # What the Rust structs read: absent optional fields omitted, `status` always there
        # (a required String), and never an event id this project derived.
        data: dict[str, Any] = handler(self)
        for name in _OPTIONAL_ON_WIRE:
            if data.get(name) is None:
                data.pop(name, None)
        if type(self.event_id) is DerivedId:
            data.pop("event_id", None)
        if "status" in data and data["status"] is None:
            data["status"] = ""
        return data

    @classmethod
    def parse_json(
        cls, raw: bytes | str, *, execution_id: str | int | None = None
    ) -> ExecutorEvent:
        """`model_validate_json(raw)`, about 3x faster for the canonical form, plus a check for
        duplicate keys (rejected with the key's name; a JSON parser keeps the last).

        JSON with canonical field names, ids as strings or integers, texts as strings,
        `created_at` written `YYYY-MM-DDTHH:MM:SS.ffffffZ` (what `model_dump_json`,
        `StdoutEventSink` and `NatsEventSink` write) and no `\\u` escape, `NaN` or `Infinity`
        anywhere is checked here and built without pydantic's validators. Text that is exactly
        orjson's serialisation of what orjson reads from it (what the sinks write) needs fewer
        checks still: no duplicate key, NaN, lone surrogate or oversized integer can be in it,
        so only U+0000 and the depth are looked for (`_verbatim`). Anything else, and
        anything invalid, goes through `model_validate_json`: the result, and the errors, are the
        same either way. `execution_id` fills an envelope that has none (or null); one that
        carries another is rejected. A :class:`ParsedRaw` gives back what its reader found.
        """
        if type(raw) is ParsedRaw:
            if raw.event is not None:
                return raw.event
            raise raw.error
        expected = None if execution_id is None else _id_value(execution_id, "execution_id")
        event, parsed = _parse_canonical(cls, raw, expected)
        if event is not None:
            return event
        return cls._parse_other(raw, parsed, expected)

    @classmethod
    def _parse_other(cls, raw: bytes | str, parsed: object, expected: str | None) -> ExecutorEvent:
        """`parse_json` for input that is not in the canonical form: the duplicate keys, then
        pydantic (`parsed`: what the canonical check's parser made of `raw`, if anything)."""
        duplicate = _duplicate_key(raw, parsed)
        if duplicate is not None:
            raise invalid(f"duplicate key {duplicate!r} in one JSON object")
        if expected is None:
            return cls.model_validate_json(raw)
        return cls.model_validate_json(raw, context={"execution_id": expected})

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

    def idempotency_key(self) -> str | int | None:
        """Upstream's `idempotency_key` (kept in `meta.unknown_fields`), when it is an id."""
        unknown = (self.meta or {}).get(UNKNOWN_FIELDS_KEY)
        key = unknown.get(IDEMPOTENCY_KEY) if isinstance(unknown, dict) else None
        if isinstance(key, bool) or not isinstance(key, str | int) or key == "":
            return None
        return key

    def resolved_event_id(self, occurrence: int = 1) -> str:
        """`event_id` when the producer sent one, else the derived id of this envelope as the
        `occurrence`-th identical one of its source (module docstring)."""
        if self.event_id is not None:
            return self.event_id
        key = self.idempotency_key()
        if key is not None:
            return _digest_id({"execution_id": self.execution_id, IDEMPOTENCY_KEY: key})
        content = self.content()
        if occurrence != 1:
            content["occurrence"] = occurrence
        return _digest_id(content)

    def with_event_id(self, occurrence: int = 1) -> ExecutorEvent:
        """This envelope with `event_id` filled in (itself when it already has one)."""
        if self.event_id is not None:
            return self
        return self.model_copy(update={"event_id": self.resolved_event_id(occurrence)})


def _fill_execution_id(data: dict[str, Any], expected: str | None) -> None:
    """Give `data` the `expected` execution id when it has none; reject another one."""
    if expected is None:
        return
    found = data.get("execution_id")
    if found is None:
        data["execution_id"] = expected
    elif isinstance(found, str | int) and not isinstance(found, bool) and str(found) != expected:
        raise ValueError(f"execution_id {str(found)!r} is not the expected {str(expected)!r}")


class ParsedRaw(bytes):
    """Raw envelope bytes that carry what their reader already found: the envelope (`event`) or
    why it is invalid (`error`). :meth:`ExecutorEvent.parse_json` gives that back without parsing
    again, so a reader can validate (fill an execution id, number identical envelopes, reject a
    duplicate key) and still hand the sink the exact input with its source position."""

    event: ExecutorEvent | None
    error: ValidationError

    @classmethod
    def of(cls, raw: bytes, event: ExecutorEvent) -> ParsedRaw:
        made = cls(raw)
        made.event = event
        return made

    @classmethod
    def rejected(cls, raw: bytes, error: ValidationError) -> ParsedRaw:
        made = cls(raw)
        made.event = None
        made.error = error
        return made


class Occurrences:
    """Counts identical id-less envelopes within one source, for their derived ids (module
    docstring). Memory: 8 bytes a distinct content (a 64-bit fingerprint in an open-addressing
    table), plus a dict entry for each content seen more than once."""

    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._used = 0
        self._repeats: dict[int, int] = {}

    def number(self, fingerprint: int) -> int:
        """How many times `fingerprint` was seen, this time included (1 the first time)."""
        key = (fingerprint & 0xFFFF_FFFF_FFFF_FFFF) | 1  # 0 marks an empty slot
        slots = self._slots
        mask = len(slots) - 1
        i = (key >> 1) & mask  # the low bit is always set
        while True:
            found = slots[i]
            if found == 0:
                slots[i] = key
                self._used += 1
                if self._used * 2 > len(slots):
                    self._grow()
                return 1
            if found == key:
                n = self._repeats.get(key, 1) + 1
                self._repeats[key] = n
                return n
            i = (i + 1) & mask

    def _grow(self) -> None:
        old = self._slots
        slots = self._slots = array("Q", bytes(16 * len(old)))
        mask = len(slots) - 1
        for key in old:
            if key:
                i = (key >> 1) & mask
                while slots[i]:
                    i = (i + 1) & mask
                slots[i] = key

    def assign(self, event: ExecutorEvent) -> ExecutorEvent:
        """`event` with its id filled in: the producer's, the idempotency key's, or the content's
        for the how-many-th identical id-less envelope of the source it is."""
        if event.event_id is not None:
            return event
        first = event.resolved_event_id()
        if event.idempotency_key() is not None:
            return event.model_copy(update={"event_id": first})
        n = self.number(int(first[7:23], 16))
        if n == 1:
            return event.model_copy(update={"event_id": first})
        return event.model_copy(update={"event_id": event.resolved_event_id(n)})


def _duplicate_key(raw: bytes | str, parsed: object) -> str | None:
    """The first key that appears twice in one object of `raw` (None: none, or not JSON).

    Free when `parsed` (what a parser made of `raw`) serialises back to exactly `raw`: text that
    is the serialisation of a dict holds no duplicate. Otherwise `raw` is parsed once more."""
    if parsed is not None:
        try:
            if orjson.dumps(parsed) == (raw.encode("utf-8") if isinstance(raw, str) else raw):
                return None
        except (TypeError, orjson.JSONEncodeError, UnicodeEncodeError):
            pass
    found: list[str] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        made = dict(pairs)
        if len(made) != len(pairs) and not found:
            seen: set[str] = set()
            found.append(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
        return made

    try:
        json.loads(raw, object_pairs_hook=pairs_hook)
    except (ValueError, RecursionError):  # not JSON (pydantic says why), or too deep
        return None
    return found[0] if found else None


def _parse_canonical(
    cls: type[ExecutorEvent], raw: bytes | str, expected: str | None = None
) -> tuple[ExecutorEvent | None, object]:
    """The envelope in `raw` when it is in the canonical form (see `ExecutorEvent.parse_json`),
    checked exactly as the validators would, else None to let pydantic decide; and the parsed
    JSON when it got that far (for the duplicate-key check)."""
    values, d = canonical_values(raw, expected)
    if values is None:
        return None, d
    return _construct(cls, values, d, expected), d


def canonical_values(
    raw: bytes | str, expected: str | None = None
) -> tuple[dict[str, Any] | None, object]:
    """The field values of the envelope in `raw` (the model's ``__dict__`` to be) when it is in the
    canonical form that `ExecutorEvent.parse_json` checks without pydantic, checked exactly as
    the validators would; else None. Second, the parsed JSON when it got that far.

    :func:`event_from` makes of that answer what `parse_json(raw)` returns; a caller that needs
    only the values (the sink's :func:`projector.batch.encode_raw`) builds no model at all."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    d = _verbatim(data)
    # Exactly orjson's serialisation of what it parsed to (what the sinks write): no duplicate
    # key (the serialisation of a dict holds none), no lone surrogate, NaN or infinity (orjson
    # refuses to read them), no integer beyond 64 bits (orjson reads it as a float, which
    # serialises differently), U+0000 only as the escape `\u0000`, and the
    # nesting is bounded: nothing `_storable` would refuse, without a walk (see `_verbatim`).
    verbatim = d is not None
    if d is None:
        # \u escapes may hide U+0000 or lone surrogates; NaN and Infinity are not JSON (the
        # parser below would take them). Text that merely contains these bytes just takes the
        # slow path.
        if _SLOW_PATH_BYTES.search(data) is not None:
            return None, None
        try:
            d = pydantic_core.from_json(data)  # keeps integers beyond 64 bits exact, as pydantic
        except ValueError:
            return None, None
    if type(d) is not dict or not _CANONICAL.issuperset(d):
        return None, d
    get = d.get
    execution_id = get("execution_id")
    event_type = get("event_type")
    event_id = get("event_id")
    step = get("step")
    status = get("status")
    worker_id = get("worker_id")
    meta = get("meta")
    created_at = get("created_at")
    if type(execution_id) is int:
        execution_id = IntegerId(execution_id)
    elif execution_id is None and expected is not None:
        execution_id = expected
    if type(event_id) is int:
        event_id = IntegerId(event_id)
    if (
        not isinstance(execution_id, str)
        or not execution_id.strip()
        or (expected is not None and execution_id != expected)
        or type(event_type) is not str
        or not event_type.strip()
        or (event_id is not None and (not isinstance(event_id, str) or not event_id.strip()))
        or (step is not None and type(step) is not str)
        or (status is not None and type(status) is not str)
        or (worker_id is not None and type(worker_id) is not str)
        or (meta is not None and type(meta) is not dict)
        or type(created_at) is not str
        or _CANONICAL_TIMESTAMP.fullmatch(created_at) is None
    ):
        return None, d
    context = get("context", {})
    # Otherwise, text that serialises back exactly (pydantic's parser read it) holds no
    # duplicate key, and without a `null` it holds nothing `_storable` would refuse: one
    # serialisation settles both. Otherwise, what `_storable` checks (numbers out of float
    # range parse as infinities, integers beyond 64 bits need the exact path: either makes
    # `_plain_json` say "look closer"), then the duplicate keys the slow way.
    if not verbatim:
        try:
            verbatim = orjson.dumps(d) == data
        except (TypeError, orjson.JSONEncodeError):
            verbatim = False
        suspect = not verbatim or b"null" in data
    else:
        suspect = False
    if suspect:
        if not _plain_json(context) or (meta is not None and not _plain_json(meta)):
            return None, d
        if not verbatim and _duplicate_key(data, None) is not None:
            return None, d
    try:
        when = datetime.fromisoformat(created_at)
    except ValueError:
        return None, d
    if when.tzinfo is not UTC:
        return None, d
    return {
        "execution_id": execution_id,
        "event_id": event_id,
        "event_type": event_type,
        "step": "" if step is None else step,
        "status": None if status == "" else status,
        "created_at": when,
        "context": context,
        "worker_id": worker_id,
        "meta": meta,
    }, d


def _construct(
    cls: type[ExecutorEvent], values: dict[str, Any], parsed: Any, expected: str | None
) -> ExecutorEvent:
    """The envelope of `canonical_values`' answer: what `model_construct` does, without its
    per-field bookkeeping (7 us an event)."""
    fields_set = {*parsed, "step"}
    if expected is not None:
        fields_set.add("execution_id")
    event = cls.__new__(cls)
    _set(event, "__dict__", values)
    _set(event, "__pydantic_fields_set__", fields_set)
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    return event


def event_from(raw: bytes | str, values: dict[str, Any] | None, parsed: object) -> ExecutorEvent:
    """`ExecutorEvent.parse_json(raw)` given what `canonical_values(raw)` answered (`values`,
    `parsed`), without reading the canonical form twice; raises the same ValidationError."""
    if values is not None:
        return _construct(ExecutorEvent, values, parsed, None)
    return ExecutorEvent._parse_other(raw, parsed, None)


def _verbatim(data: bytes) -> Any:
    """What orjson reads from `data` when `data` is exactly orjson's serialisation of it and holds
    nothing `_storable` refuses (checked here without walking it), else None.

    orjson reads strict JSON only: no NaN or infinities (also none from numbers beyond float
    range), no lone surrogates (escaped or as bytes), no integers beyond 64 bits (it reads them as
    floats, which then serialise differently). Its output writes U+0000 as ``\\u0000``, so the
    absence of those bytes means no NUL in any key or text; and the depth is bounded as in
    `_plain_json` (`MAX_JSON_DEPTH` counts from the envelope's fields, one level below the
    top)."""
    try:
        d = orjson.loads(data)
        if orjson.dumps(d) != data:
            return None
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # (nested past orjson's limit too)
        return None
    if data.find(b"\\") >= 0 and b"\\u0000" in data:  # (find: memchr, ~4x cheaper than `in`)
        return None
    if len(data) > 2 * MAX_JSON_DEPTH and data.count(b"[") + data.count(b"{") > MAX_JSON_DEPTH:
        return None
    return d


_set = object.__setattr__
_SLOW_PATH_BYTES = re.compile(rb"\\u|NaN|Infinity")
# Exactly `format_timestamp`'s form: anything else (other precisions, offsets, ISO week dates that
# `datetime.fromisoformat` would take) is left to pydantic.
# (`\d` with re.ASCII is [0-9], and matches a third faster than the class.)
_CANONICAL_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", re.ASCII)
