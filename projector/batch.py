"""One batch of the sink, without I/O: what goes in, what is written, what each item became.

:func:`prepare` validates and serialises the caller's items: each valid one becomes a
:class:`Pending` row (:func:`encode`: its COPY row, JSON serialised once, and its
:func:`content_hash`; a raw envelope in the sinks' canonical form with an event id goes through
:func:`encode_raw`, which builds the same row from the checked field values without the
`ExecutorEvent`), each invalid one (whatever validating it raised) a :class:`RejectedItem`
for ``noetl.event_rejected``, whose :meth:`~RejectedItem.columns` are storable whatever the input
held: at most :data:`REJECTED_PREFIX_BYTES` of it, with its length and SHA-256. Once the write
transaction (``projector.pglookup``) has found which keys are stored already, as :class:`StoredRow`
s, :func:`triage` says which items surely differ from their stored row and which the server must
compare in full, :func:`fresh` which rows to COPY, and :func:`classify` what each item became:
inserted, duplicate (identical content) or conflict (the same key with other content). Items of
one batch that share a key are compared here by :func:`same_content`, with jsonb's equality
(:func:`jsonb_equal`), as the server compares stored rows.

The results the sink returns, :class:`BatchResult` with one :data:`Outcome` per item and a
:class:`Rejection` per item not stored, are defined here too, as is :class:`RawEnvelope`, the
undecoded input the sink validates itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, NamedTuple, cast

import orjson
from pydantic import ValidationError

from .envelope import ENVELOPE_FIELDS, ExecutorEvent, canonical_values, event_from

__all__ = [
    "COPY_COLUMNS",
    "COPY_TYPES",
    "REJECTED_PREFIX_BYTES",
    "REJECTED_TEXT_CHARS",
    "BatchResult",
    "Item",
    "Key",
    "Outcome",
    "Outcomes",
    "Pending",
    "RawEnvelope",
    "RejectedItem",
    "Rejection",
    "StoredRow",
    "classify",
    "compare_values",
    "content_hash",
    "describe_validation_error",
    "encode",
    "encode_raw",
    "first_occurrences",
    "fresh",
    "jsonb_equal",
    "prepare",
    "rejected_item",
    "same_content",
    "storable_text",
    "triage",
    "windows",
]

Outcome = Literal["inserted", "duplicate", "conflict", "rejected"]

#: An event's key in noetl.event: `(execution_id, event_id)`.
Key = tuple[str, str]

#: noetl.event's columns as the sink writes them: the envelope's fields, in the same order, then
#: the content fingerprint (the `sink.copy` statement names them in this order).
COPY_COLUMNS = (*ENVELOPE_FIELDS, "content_hash")
#: The types of :data:`COPY_COLUMNS` as COPY sends them. The jsonb columns travel as jsonb's binary
#: wire format (a version byte, then the JSON text), built by :func:`encode`; declaring them bytea
#: makes psycopg pass those bytes through with its C dumper.
COPY_TYPES = [*["text"] * 5, "timestamptz", "bytea", "text", "bytea", "bytea"]

_JSONB_VERSION = b"\x01"  # jsonb's binary input format: this version byte, then JSON text


@dataclass(frozen=True)
class RawEnvelope:
    """Undecoded input (a line, a message body) that the sink validates itself.

    `position` is where it came from in its source (a line number, a stream sequence) and is stored
    with a rejection; `source` names the file, subject or caller.
    """

    raw: bytes | str
    source: str
    position: int | None = None


#: What `emit_many` takes: envelopes, raw JSON, or mappings to validate.
Item = ExecutorEvent | RawEnvelope | Mapping[str, Any]


@dataclass(frozen=True)
class Rejection:
    """An item that was not stored: its index in the batch, the reason, and its source position."""

    position: int
    reason: str
    line: int | None = None


@dataclass
class BatchResult:
    """What `emit_many` did with each item. `outcomes` is index-aligned with the items."""

    inserted: int = 0
    duplicates: int = 0
    conflicts: int = 0
    conflict_ids: list[tuple[str, str]] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """The summary `projector ingest --json` prints."""
        return {
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "conflicts": self.conflicts,
            "rejected": len(self.rejected),
        }

    def extend(self, other: BatchResult) -> None:
        """Append another batch's result (positions shifted past this one's items)."""
        offset = len(self.outcomes)
        self.inserted += other.inserted
        self.duplicates += other.duplicates
        self.conflicts += other.conflicts
        self.conflict_ids.extend(other.conflict_ids)
        self.rejected.extend(
            Rejection(r.position + offset, r.reason, r.line) for r in other.rejected
        )
        self.outcomes.extend(other.outcomes)


def describe_validation_error(exc: ValidationError) -> str:
    """A one-line reason from a pydantic error: `field: message; field: message`."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"])
        msg = str(err["msg"]).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def windows(items: Iterable[Item], size: int) -> Iterator[Sequence[Item]]:
    """`items` in lists of `size` (one empty list for no items); a sequence is sliced."""
    if isinstance(items, Sequence):
        for start in range(0, len(items), size):
            yield items[start : start + size]
        if not items:
            yield []
        return
    chunk: list[Item] = []
    sent = False
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk, sent = [], True
    if chunk or not sent:
        yield chunk


@dataclass
class Outcomes:
    """Per-item results of one chunk of a batch, filled in by the transactions that write it:
    each item's outcome at its index (None: not written yet), the reasons of rejected items,
    the keys of conflicts.

    `items`, `source` and `offset` are the chunk's items as the caller gave them and what
    :func:`prepare` was called with: a row the database refuses is rejected (:meth:`refused`)
    with its input as given, like any other rejection.
    """

    outcomes: list[Outcome | None]
    reasons: dict[int, str] = field(default_factory=dict)
    conflicts: list[Key] = field(default_factory=list)
    #: Set once a COPY's rows are sent and the server is busy storing them (see `emit_many`).
    copying: asyncio.Event | None = None
    items: Sequence[Item] = ()
    source: str = "api"
    offset: int | None = 0
    #: The rejections of rows the database refused (the others come from `prepare`).
    refusals: list[RejectedItem] = field(default_factory=list)

    def reject(self, index: int, reason: str) -> None:
        """Item `index` is not stored, for `reason`."""
        self.outcomes[index] = "rejected"
        self.reasons[index] = reason

    def refused(self, pending: Pending, reason: str) -> RejectedItem:
        """The database refused `pending`'s row, for `reason`: reject it; its rejection."""
        item = self.items[pending.index] if self.items else pending.envelope()
        rejected = rejected_item(pending.index, item, self.source, reason, self.offset)
        self.refusals.append(rejected)
        self.reject(pending.index, reason)
        return rejected

    def result(self, rejects: Iterable[RejectedItem]) -> BatchResult:
        """The chunk's result (items with no outcome count as rejected, "not stored" unless
        their reason is known); `rejects` give the rejected items' source positions."""
        outcomes = self.outcomes
        result = BatchResult(
            inserted=outcomes.count("inserted"),
            duplicates=outcomes.count("duplicate"),
            conflicts=outcomes.count("conflict"),
            conflict_ids=self.conflicts,
        )
        if result.inserted + result.duplicates + result.conflicts < len(outcomes):
            lines = {r.index: r.line for r in (*rejects, *self.refusals)}
            result.rejected = [
                Rejection(i, self.reasons.get(i, "not stored"), lines.get(i))
                for i, o in enumerate(outcomes)
                if o is None or o == "rejected"
            ]
            result.outcomes = [o if o is not None else "rejected" for o in outcomes]
        else:
            result.outcomes = outcomes  # type: ignore[assignment]  # no None left
        return result


# -- rows ----------------------------------------------------------------------------------------


class Pending(NamedTuple):
    """A validated event waiting in a batch.

    `index` is its position in the caller's items; `event` the envelope, or the raw JSON it was
    read from when its row was built straight from that (:func:`encode_raw`; :meth:`envelope`
    gives the envelope either way); `key` its `(execution_id, event_id)`, with the
    event id resolved (derived from the content when the producer sent none); `row` its COPY row,
    the values of :data:`COPY_COLUMNS` in that order with the JSON already serialised, built once
    by :func:`encode` and handed to COPY as it is. (A named tuple: :func:`encode` builds one per
    event, and a tuple is built without a Python-level ``__init__``; the field `index` hides
    ``tuple.index``, which nothing calls on a Pending.)
    """

    index: int  # type: ignore[assignment]
    event: ExecutorEvent | bytes
    key: Key
    content_hash: bytes
    row: tuple[Any, ...]

    def envelope(self) -> ExecutorEvent:
        """The envelope (read from the raw JSON again when the row was built without it)."""
        event = self.event
        # type() is, not isinstance: pydantic's metaclass makes isinstance cost a microsecond.
        if type(event) is bytes:
            return ExecutorEvent.parse_json(event)
        return cast(ExecutorEvent, event)

    @property
    def created_at(self) -> datetime:
        """The envelope's `created_at`, from the row."""
        created_at: datetime = self.row[5]
        return created_at


class StoredRow(NamedTuple):
    """A row of noetl.event found by the write transaction's lookup (``projector.pglookup``).

    `txid` is the id of the transaction that stored it, as text; `content_hash` is None for rows
    written by something other than the sink.
    """

    execution_id: str
    event_id: str
    created_at: datetime
    txid: str
    content_hash: bytes | None


def _dumps(obj: Any) -> bytes | str:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, exotic types
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _json_bytes(value: Any) -> bytes:
    """`value` as JSON bytes; UnicodeEncodeError (a ValueError) for lone surrogates."""
    dumped = _dumps(value)
    return dumped if isinstance(dumped, bytes) else dumped.encode("utf-8")


def _check_texts(fields: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first text field of an envelope's `fields` that UTF-8 cannot
    hold (an envelope built without validation); only called once orjson has refused something."""
    for name in ("execution_id", "event_id", "event_type", "step", "status", "worker_id"):
        value = fields.get(name)
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{name} contains a lone surrogate") from None


#: An envelope's fields in the order `encode` reads them from the model's ``__dict__``.
_FIELDS = operator.itemgetter(
    "execution_id",
    "event_id",
    "event_type",
    "step",
    "status",
    "created_at",
    "worker_id",
    "context",
    "meta",
)
#: Copied for each content hash (BLAKE2b with a 16-byte digest).
_BLAKE2B_128 = hashlib.blake2b(digest_size=16)
_new_pending = tuple.__new__


def encode(index: int, event: ExecutorEvent) -> Pending:
    """`event` (item `index` of a batch) as a pending row: the envelope's columns, its JSON
    serialised once, here, for COPY and for the content hash; then the content hash.

    Raises TypeError or ValueError for content that JSON cannot hold (an envelope built without
    validation: infinities, lone surrogates, in text fields too)."""
    # Every field in one C call from the model's __dict__, where pydantic keeps the field values
    # (~0.11 us against ~0.24 us for nine attribute reads through the model's class).
    return _encode(index, event, event.__dict__)


def encode_raw(index: int, raw: bytes) -> Pending:
    """`encode(index, ExecutorEvent.parse_json(raw))`: the same row and hash, and the same
    ValidationError for invalid input. When `raw` is in the canonical form and names its event id
    (what `NatsEventSink` and `StdoutEventSink` write), the row is made from the field values
    the check found (:func:`~projector.envelope.canonical_values`) without building the
    envelope (the Pending holds `raw` instead); otherwise the envelope is built from what that
    check read, without parsing the canonical form twice."""
    values, parsed = canonical_values(raw)
    if values is None or values["event_id"] is None:
        return encode(index, event_from(raw, values, parsed))
    return _encode(index, raw, values)


def _encode(index: int, event: ExecutorEvent | bytes, fields: dict[str, Any]) -> Pending:
    """The pending row of `fields` (an envelope's ``__dict__``, or the values it would hold);
    `event` is the envelope, or the raw JSON it holds an event id of (see :func:`encode_raw`)."""
    try:
        (
            execution_id,
            event_id,
            event_type,
            step,
            status,
            created_at,
            worker_id,
            context_value,
            meta_value,
        ) = _FIELDS(fields)
    except KeyError as missing:  # model_construct without a required field
        raise ValueError(f"{missing.args[0]} is missing") from None
    if event_id is None:
        # Only an envelope lacks one here: encode_raw builds the envelope for a raw without an id.
        assert isinstance(event, ExecutorEvent)
        event_id = event.resolved_event_id()
    head_fields = (event_type, step, status, created_at, worker_id)
    meta: bytes | None = None
    try:
        context = orjson.dumps(context_value)
        head = orjson.dumps(head_fields)
        if meta_value is not None:
            meta = orjson.dumps(meta_value)
    except (TypeError, orjson.JSONEncodeError):  # beyond 64-bit integers, lone surrogates
        _check_texts(fields)
        context = _json_bytes(context_value)
        head = repr(head_fields).encode("utf-8", "surrogatepass")
        meta = None if meta_value is None else _json_bytes(meta_value)
    hasher = _BLAKE2B_128.copy()  # cheaper than building one with its parameters
    hasher.update(b"".join((head, b"\n", context, b"\n", b"-" if meta is None else meta)))
    digest = hasher.digest()
    return _new_pending(
        Pending,
        (
            index,
            event,
            (execution_id, event_id),
            digest,
            (
                execution_id,
                event_id,
                event_type,
                step,
                status,
                created_at,
                _JSONB_VERSION + context,
                worker_id,
                None if meta is None else _JSONB_VERSION + meta,
                digest,
            ),
        ),
    )


def content_hash(event: ExecutorEvent) -> bytes:
    """The 16-byte fingerprint stored in noetl.event.content_hash for `event`'s content.

    BLAKE2b-128 of: the JSON array `[event_type, step, status, created_at, worker_id]` (created_at
    in RFC 3339, UTC), a newline, `context` as JSON, a newline, and `meta` as JSON (or `-` when
    there is none), all serialised by orjson as the sink writes them (content orjson cannot
    write, such as integers beyond 64 bits, is hashed from the json module's text and the
    array's Python repr instead). Equal hashes mean identical content; different hashes mean
    "compare in full" (the same JSON may be spelled differently).
    """
    return encode(0, event).content_hash


def _json_text(value: bytes | None) -> str | None:
    """JSON text from a row's jsonb wire value."""
    return None if value is None else value[1:].decode("utf-8", "surrogatepass")


def compare_values(p: Pending) -> tuple[str | None, ...]:
    """`p`'s content as text, as the server-side comparison (`sink.compare_*`) takes it:
    execution id, event id, created_at (ISO 8601), event_type, step, status, context JSON,
    worker_id, meta JSON."""
    execution_id, event_id, event_type, step, status, created_at, context, worker_id, meta, _ = (
        p.row
    )
    return (
        execution_id,
        event_id,
        created_at.isoformat(),
        event_type,
        step,
        status,
        _json_text(context),
        worker_id,
        _json_text(meta),
    )


# -- rejections ----------------------------------------------------------------------------------

#: At most this many bytes of a rejected item's input are kept (``raw`` / ``raw_bytes``); its full
#: length and SHA-256 are kept beside them, so even a rejected 100 MB line costs 64 KiB.
REJECTED_PREFIX_BYTES = 65_536
#: A rejection's reason (and source) is cut to this many characters.
REJECTED_TEXT_CHARS = 2_000
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


@dataclass(slots=True)
class RejectedItem:
    """An item on its way to noetl.event_rejected: its index in the batch, its input as given,
    where that came from (`source`, and `line`: the position in the source) and why."""

    index: int
    raw: bytes | str
    source: str
    line: int | None
    reason: str

    def columns(self) -> tuple[str, bytes | None, int, bytes, str, int | None, str]:
        """The values of the `sink.reject` statement: raw, raw_bytes, raw_length, raw_sha256,
        source, position, reason; each one storable whatever the input held (text without NUL
        or lone surrogates, at most :data:`REJECTED_PREFIX_BYTES` of the input, a position
        that fits a bigint or None)."""
        raw: object = self.raw
        if isinstance(raw, str):
            data = raw.encode("utf-8", "surrogatepass")
        elif isinstance(raw, bytes | bytearray | memoryview):
            data = bytes(raw)
        else:  # not what a RawEnvelope is meant to hold; kept as what it is
            data = repr(raw).encode("utf-8", "surrogatepass")
        line = self.line
        if line is not None and not _BIGINT_MIN <= line <= _BIGINT_MAX:
            line = None  # not a position a bigint can hold
        return (
            *_raw_columns(data),
            len(data),
            hashlib.sha256(data).digest(),
            storable_text(str(self.source)),
            line,
            storable_text(self.reason),
        )


def storable_text(text: str, limit: int = REJECTED_TEXT_CHARS) -> str:
    """`text` as PostgreSQL text can hold it: U+0000 written ``\\x00``, lone surrogates as
    ``\\udXXX``; cut to `limit` characters (an ellipsis marks the cut)."""
    if len(text) > limit:
        text = text[: limit - 1] + "\u2026"
    if text.isascii() and "\x00" not in text:
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text.replace("\x00", "\\x00")


def _raw_columns(data: bytes) -> tuple[str, bytes | None]:
    """At most :data:`REJECTED_PREFIX_BYTES` of the input `data` as text for event_rejected.raw
    (bytes that are not UTF-8 written ``\\xNN``, NUL ``\\x00``), and the same bytes exactly when
    text cannot hold them."""
    prefix = data[:REJECTED_PREFIX_BYTES]
    try:
        text = prefix.decode("utf-8")
    except UnicodeDecodeError as exc:
        cut_a_character = (
            len(data) > len(prefix)
            and exc.end == len(prefix)
            and exc.reason == "unexpected end of data"
        )
        if not cut_a_character:
            return prefix.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"), prefix
        prefix = prefix[: exc.start]  # end the prefix before the character it would split
        text = prefix.decode("utf-8")
    if "\x00" in text:
        return text.replace("\x00", "\\x00"), prefix
    return text, None


def _written_out(item: object) -> bytes | str:
    """An item that is not raw input, as JSON text (or its repr, or less, when it has none)."""
    try:
        if isinstance(item, ExecutorEvent):
            return item.model_dump_json()
        return json.dumps(item, ensure_ascii=False, default=repr)
    except Exception:  # (not JSON, lone surrogates, nested too deeply to write)
        pass
    try:
        return repr(item)
    except Exception as exc:  # (nested too deeply even for repr)
        return f"<{type(item).__name__} that cannot be written out: {type(exc).__name__}>"


def rejected_item(
    i: int, item: object, source: str, reason: str, offset: int | None = 0
) -> RejectedItem:
    """Item `i` rejected for `reason`, with its input as faithfully as it can be kept. A raw
    envelope keeps its own source and position; anything else gets `source` and its position
    `offset + i` in the caller's items (no position when `offset` is None)."""
    if isinstance(item, RawEnvelope):
        return RejectedItem(i, item.raw, item.source, item.position, reason)
    return RejectedItem(
        i, _written_out(item), source, None if offset is None else offset + i, reason
    )


#: pydantic's error types for input its JSON parser refused as a whole.
_PARSER_REFUSALS = frozenset({"json_invalid", "string_unicode"})


def _parser_reason(raw: bytes | str, exc: ValidationError) -> str:
    """The reason `raw` is rejected. When the fast JSON parser refused it (lone surrogates, as
    ``\\u`` escapes or in a str, nesting past its limit), the json module reads it once more so
    that the reason names the field, as for any other input, rather than a column of the
    text."""
    reason = describe_validation_error(exc)
    if not any(e["type"] in _PARSER_REFUSALS for e in exc.errors(include_url=False)):
        return reason
    try:
        data = json.loads(raw)
        ExecutorEvent.model_validate(data)
    except ValidationError as closer:
        return describe_validation_error(closer)
    except Exception:  # (not JSON to the json module either, or nested too deeply)
        pass
    return reason


def prepare(
    items: Sequence[Item],
    source: str,
    pending: list[Pending],
    rejects: list[RejectedItem],
    start: int = 0,
    stop: int | None = None,
    offset: int | None = 0,
) -> None:
    """Validate and serialise `items[start:stop]` into `pending`; the invalid into `rejects`.

    `offset` is where `items` starts in the caller's items (the position kept for a rejected
    mapping or envelope; None: keep none). No item can fail the others: whatever one raises
    (an envelope built without validation holding what JSON cannot, a timestamp out of range,
    nesting past what Python can walk) rejects that item, with the exception as its reason."""
    for i in range(start, len(items) if stop is None else min(stop, len(items))):
        item = items[i]
        try:
            # The two common classes by identity first: isinstance() against a pydantic model
            # goes through its metaclass's __instancecheck__ (~1-3 us an item, measured in the
            # NATS bridge's profile).
            if type(item) is ExecutorEvent:
                pending.append(encode(i, item))
                continue
            if type(item) is RawEnvelope:
                raw = item.raw
                if type(raw) is bytes:  # (not a ParsedRaw: that one carries its envelope)
                    pending.append(encode_raw(i, raw))
                else:
                    pending.append(encode(i, ExecutorEvent.parse_json(raw)))
                continue
            if isinstance(item, ExecutorEvent):
                event = item
            elif isinstance(item, RawEnvelope):
                event = ExecutorEvent.parse_json(item.raw)
            else:
                event = ExecutorEvent.model_validate(item)
            pending.append(encode(i, event))
        except ValidationError as exc:
            if isinstance(item, RawEnvelope):
                reason = _parser_reason(item.raw, exc)
            else:
                reason = describe_validation_error(exc)
            rejects.append(rejected_item(i, item, source, reason, offset))
        except Exception as exc:  # (one item's failure is that item's alone)
            reason = (
                f"not storable: {exc}"
                if isinstance(exc, TypeError | ValueError)
                else (f"not storable: {type(exc).__name__}: {exc}")
            )
            rejects.append(rejected_item(i, item, source, reason, offset))


# -- classification ------------------------------------------------------------------------------


def first_occurrences(pending: Iterable[Pending]) -> dict[Key, Pending]:
    """Each key's first item in the batch: the one written (later ones are compared with it)."""
    first: dict[Key, Pending] = {}
    for p in pending:
        first.setdefault(p.key, p)
    return first


def fresh(first: Mapping[Key, Pending], stored: Mapping[Key, StoredRow]) -> Iterable[Pending]:
    """The rows to write: the first item of every key that is not stored."""
    if not stored:
        return first.values()
    return [p for key, p in first.items() if key not in stored]


def triage(
    pending: Iterable[Pending], stored: Mapping[Key, StoredRow], earlier_txids: set[str]
) -> tuple[set[int], list[Pending]]:
    """For the items whose key is stored, not by an earlier attempt at this batch: the indexes of
    those stored with another created_at (in another partition: surely other content), and the
    items the server must compare in full (no stored hash, or another one: the same JSON may be
    spelled differently). The others have their stored row's hash: identical content (the hash
    covers created_at too)."""
    changed: set[int] = set()
    candidates: list[Pending] = []
    for p in pending:
        hit = stored.get(p.key)
        if hit is None or hit.content_hash == p.content_hash or hit.txid in earlier_txids:
            continue
        if hit.created_at != p.created_at:
            changed.add(p.index)
        else:
            candidates.append(p)
    return changed, candidates


def classify(
    pending: Sequence[Pending],
    first: Mapping[Key, Pending],
    stored: Mapping[Key, StoredRow],
    changed: set[int],
    earlier_txids: set[str],
    outcomes: list[Outcome | None],
    conflicts: list[Key],
) -> None:
    """Set each item's outcome (at its index in `outcomes`) and append the keys of conflicts.

    A key that was not stored (or was, by an earlier attempt at this batch whose COMMIT was lost
    in flight) is inserted by its first item; later items with the same content are duplicates,
    with other content conflicts. A key stored before is a duplicate unless its index is in
    `changed` (other content, see :func:`triage`): a conflict, the stored row left unchanged."""
    if not stored and len(first) == len(pending):  # the common case: all new, all distinct
        for p in pending:
            outcomes[p.index] = "inserted"
        return
    for p in pending:
        key = p.key
        hit = stored.get(key)
        if hit is None or hit.txid in earlier_txids:  # new, or ours from a lost COMMIT
            winner = first[key]
            if p is winner or same_content(winner, p):
                outcomes[p.index] = "inserted" if p is winner else "duplicate"
                continue
        elif p.index not in changed:
            outcomes[p.index] = "duplicate"
            continue
        outcomes[p.index] = "conflict"
        conflicts.append(key)


def _json_number(value: int | float) -> Decimal:
    """The number jsonb reads from `value`'s JSON text as the sink writes it."""
    return Decimal(value) if isinstance(value, int) else Decimal(_json_bytes(value).decode())


def same_content(a: Pending, b: Pending) -> bool:
    """Whether two events of one batch hold the same envelope apart from their key, by the rules
    the server's comparison applies to stored rows (jsonb equality)."""
    if a.content_hash == b.content_hash:
        return True
    x, y = a.envelope(), b.envelope()
    return bool(
        x.event_type == y.event_type
        and x.step == y.step
        and x.status == y.status
        and x.created_at == y.created_at
        and x.worker_id == y.worker_id
        and jsonb_equal(x.context, y.context)
        and jsonb_equal(x.meta, y.meta)
    )


def jsonb_equal(a: Any, b: Any) -> bool:
    """JSON equality as jsonb has it: numbers by the value of their JSON text (1 = 1.0), but
    `true` is not `1`, and object keys in any order."""
    if a.__class__ is float and not math.isfinite(a):
        a = None  # orjson writes infinities and NaN as null
    if b.__class__ is float and not math.isfinite(b):
        b = None
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        if a.__class__ is b.__class__:
            return a == b
        # An integer and a float: jsonb reads the float's shortest text, 2.0**60 as
        # 1.152921504606847e18, which is not 2**60 (although Python's float is).
        return _json_number(a) == _json_number(b)
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(jsonb_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(jsonb_equal(v, w) for v, w in zip(a, b, strict=True))
    return False
