"""`PostgresEventSink`: stores envelopes in `noetl.event` exactly once, as fast as COPY allows.

How one batch is written (one transaction, retried as a whole):

1. Envelopes are validated and serialised (JSON once, for COPY and for the content hash); the ones
   that fail go to `noetl.event_rejected` with their position and reason, and the rest of the
   batch is stored.
2. Transaction-level advisory locks are taken on the batch's execution ids (hashed into
   :data:`LOCK_BUCKETS` buckets, in sorted order, so writers never deadlock). Every writer takes
   them, so the check below cannot race with another sink.
3. The lookup finds which `(execution_id, event_id)` pairs are already stored, in any partition,
   with their `content_hash` (see :func:`content_hash`): one range scan per execution over the
   batch's ids (producers' ids grow, so new events cost one index descent per execution, not one
   per key), falling back to a probe per key where a range is too dense. The locks and the
   lookup travel with the BEGIN in one pipelined round trip. Identical content is a duplicate;
   different content is a conflict: reported, the stored row left unchanged. Equal hashes settle
   "identical" in the client; the rare rest (no hash: written by something else; or another hash:
   a conflict, or the same JSON in another key order) is compared in the server, as jsonb.
4. Only the new rows are written, with binary `COPY`; one payload-free NOTIFY wakes projectors.

`emit_many` prepares (step 1) the next window of events while the server stores the current
window's COPY, so Python work and database work overlap.

Retries: transient failures (connection lost, server restarting, serialization failures, a unique
violation from a writer that bypassed the locks) roll back and replay the batch with exponential
backoff. Since the replay repeats the lookup, no retry stores a row twice; rows found with the
transaction id of an earlier attempt whose COMMIT was lost in flight are counted as inserted.

`emit()` group-commits: callers queue their event and wait; a flusher writes everything queued so
far in one transaction and wakes them all once it is committed. The queue is bounded, so a slow
database slows callers down instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import random
import time
import zlib
from collections.abc import Awaitable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self

import orjson
import psycopg
from psycopg import errors as pgerrors
from psycopg.types.string import BytesBinaryDumper
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError

from .channels import NOTIFY_CHANNEL
from .database import CONNECT_KWARGS
from .envelope import ENVELOPE_FIELDS, ExecutorEvent
from .errors import (
    DatabaseUnavailable,
    EventConflict,
    InvalidEnvelope,
    ProjectorError,
    SchemaMissing,
    is_transient,
    translate,
)

__all__ = [
    "LOCK_BUCKETS",
    "BatchResult",
    "Outcome",
    "PostgresEventSink",
    "RawEnvelope",
    "Rejection",
    "content_hash",
    "describe_validation_error",
]

log = logging.getLogger(__name__)

Outcome = Literal["inserted", "duplicate", "conflict", "rejected"]

#: Advisory lock namespace (first key of the two-key form) and number of execution-id buckets.
LOCK_CLASS = 0x6E6F  # "no"
LOCK_BUCKETS = 1024

# noetl.event's columns mirror the envelope's fields, in the same order (see `_row`), then the
# content fingerprint.
_COLUMNS = (*ENVELOPE_FIELDS, "content_hash")
# The jsonb columns travel as jsonb's binary wire format (a version byte, then the JSON text),
# built in `_row`; declaring them bytea makes psycopg pass those bytes through with its C dumper.
_COPY_TYPES = [*["text"] * 5, "timestamptz", "bytea", "text", "bytea", "bytea"]
_COPY = f"COPY noetl.event ({', '.join(_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
# The transaction id (to recognise our own rows after a lost COMMIT), the advisory locks (taken in
# sorted order so that writers never deadlock) and the projectors' wake-up, in one round trip. A
# NOTIFY is delivered at commit wherever it stands in the transaction, and only then.
_BEGIN = (
    "SELECT pg_current_xact_id()::text,"
    " (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(%s, b)"
    "  FROM (SELECT unnest(%s::int[]) AS b ORDER BY 1) o) l)"
)
_BEGIN_NOTIFY = _BEGIN + ", pg_notify(%s, '')"
# Phase 1, for every key of the batch: is it stored already, with which created_at, by whom.
#
# First, one range scan per execution of the batch over the unique index, from its smallest to its
# largest event id in the batch (bounds computed in the server, in the column's collation), at most
# `2n + 16` rows for n keys. Producers' ids grow (snowflakes, counters), so the range of new events
# holds no stored row and costs one index descent per partition instead of one per key; a
# redelivered batch finds exactly its own rows. Only an execution whose range is denser than that
# (random ids interleaved with stored ones) has its keys probed one by one, as below.
_RANGE_SCAN = (
    " CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,"
    "  x.content_hash FROM noetl.event x WHERE x.execution_id = b.execution_id"
    "  AND x.event_id >= b.lo AND x.event_id <= b.hi LIMIT 2 * b.n + 16) r"
)
_RANGES = (
    "SELECT r.execution_id, r.event_id, r.created_at, r.txid, r.content_hash, b.n"
    " FROM (SELECT k.execution_id, min(k.event_id) AS lo, max(k.event_id) AS hi, count(*) AS n"
    "  FROM unnest({unnest}, {unnest}) AS k(execution_id, event_id) GROUP BY 1) b" + _RANGE_SCAN
)
# The same with bounds computed by the client, when every id is a decimal number of one length per
# execution (snowflakes, counters): such strings sort alike in every collation.
_RANGES_GIVEN = (
    "SELECT r.execution_id, r.event_id, r.created_at, r.txid, r.content_hash, b.n"
    " FROM unnest({unnest}, {unnest}, {unnest}, %s::int[]) AS b(execution_id, lo, hi, n)"
    + _RANGE_SCAN
)


def _decimal_bounds(keys: Iterable[tuple[str, str]]) -> dict[str, list[Any]] | None:
    """Per execution `[lo, hi, n]` of its event ids, when they are all ASCII decimal numbers of
    one length (so that every collation orders them as Python does); else None."""
    bounds: dict[str, list[Any]] = {}
    for execution_id, event_id in keys:
        b = bounds.get(execution_id)
        if b is None:
            if not (event_id.isascii() and event_id.isdigit()):
                return None
            bounds[execution_id] = [event_id, event_id, 1]
            continue
        if len(event_id) != len(b[0]) or not (event_id.isascii() and event_id.isdigit()):
            return None
        if event_id < b[0]:
            b[0] = event_id
        elif event_id > b[1]:
            b[1] = event_id
        b[2] += 1
    return bounds


def _range_limit(n: int) -> int:
    return 2 * n + 16


# The per-key probes. LATERAL ... OFFSET 0 keeps the plan a nested loop of index probes whatever
# the estimates: a hash join would scan the whole table. The windowed form probes only rows whose
# created_at lies in the months the batch covers, so every other partition is pruned before
# execution; the executions that also have rows outside those months have their keys looked up
# everywhere. Before that, `_STORED_EXECUTIONS` says which executions have any row at all (three
# index probes per execution, not per key): the keys of a new execution need no probe.
_LOOKUP_COLUMNS = "SELECT e.execution_id, e.event_id, e.created_at, e.txid, e.content_hash"
_LOOKUP_JOIN = (
    " CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,"
    " x.content_hash"
    " FROM noetl.event x WHERE x.execution_id = k.execution_id AND x.event_id = k.event_id"
    "{window} OFFSET 0) e"
)
_WINDOW = " AND x.created_at >= %s AND x.created_at < %s"
#: Items validated and serialised between two turns of the event loop (see `_prepare_yielding`).
PREPARE_SLICE = 50
#: Below this many keys one lookup in every partition costs less than the extra round trip.
WINDOW_MIN_KEYS = 500
_STORED_EXECUTIONS = (
    "SELECT s.x, s.outside FROM (SELECT u.x,"
    " EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x"
    "  AND e.created_at >= %s AND e.created_at < %s) AS inside,"
    " EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x AND e.created_at < %s)"
    " OR EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x AND e.created_at >= %s)"
    " AS outside FROM unnest({unnest}) AS u(x)) s WHERE s.inside OR s.outside"
)
# Values travel as strings joined by U+001F (U+001E marks NULL): parsing them server-side is about
# twice as fast as binding text[] parameters. Values containing either character use arrays.
SEPARATOR = "\x1f"
NULL_MARK = "\x1e"
_JOINED = "string_to_array(%s, E'\\x1f', E'\\x1e')"
_ARRAY = "%s::text[]"
_KEY_COLUMNS = "k(execution_id, event_id)"


def _lookup_sql(unnest: str, windowed: bool) -> str:
    join = _LOOKUP_JOIN.format(window=_WINDOW if windowed else "")
    return f"{_LOOKUP_COLUMNS} FROM unnest({unnest}, {unnest}) AS {_KEY_COLUMNS}{join}"


def _month_window(times: Sequence[datetime]) -> tuple[datetime, datetime]:
    """From the first month of `times` (UTC) to the first month after them."""
    lo = min(times).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last = max(times)
    hi = (
        last.replace(year=last.year + 1, month=1, day=1)
        if last.month == 12
        else last.replace(month=last.month + 1, day=1)
    ).replace(hour=0, minute=0, second=0, microsecond=0)
    return lo, hi


# Phase 2, only for keys stored with the same created_at and without the same content hash: which
# of them differ in content. The comparison runs in the server (jsonb equality, which ignores key
# order and number spelling, as the client's hash does not).
_COMPARE_COLUMNS = (
    "k(execution_id, event_id, created_at, event_type, step, status, context, worker_id, meta, i)"
)
_COMPARE_WHERE = (
    " CROSS JOIN LATERAL (SELECT * FROM noetl.event x WHERE x.execution_id = k.execution_id"
    " AND x.event_id = k.event_id AND x.created_at = k.created_at::timestamptz LIMIT 1) e"
    " WHERE e.event_type IS DISTINCT FROM k.event_type OR e.step IS DISTINCT FROM k.step"
    " OR e.status IS DISTINCT FROM k.status OR e.context IS DISTINCT FROM k.context::jsonb"
    " OR e.worker_id IS DISTINCT FROM k.worker_id OR e.meta IS DISTINCT FROM k.meta::jsonb"
)


def _compare_sql(unnest: str) -> str:
    columns = ", ".join([unnest] * 9)
    return (
        f"SELECT k.i FROM unnest({columns}) WITH ORDINALITY AS {_COMPARE_COLUMNS}{_COMPARE_WHERE}"
    )


_REJECT = (
    "INSERT INTO noetl.event_rejected (raw, raw_bytes, source, position, reason)"
    " VALUES (%s, %s, %s, %s, %s)"
)

Row = tuple[Any, ...]


@dataclass(frozen=True)
class RawEnvelope:
    """Undecoded input (a line, a message body) that the sink validates itself.

    `position` is where it came from in its source (a line number, a stream sequence) and is stored
    with a rejection; `source` names the file, subject or caller.
    """

    raw: bytes | str
    source: str
    position: int | None = None


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


def _dumps(obj: Any) -> bytes | str:
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits, exotic types
        return json.dumps(obj, ensure_ascii=False, allow_nan=False)


def _raw_columns(raw: bytes | str) -> tuple[str, bytes | None]:
    """`raw` as text for event_rejected.raw; the exact bytes too when text cannot hold them."""
    if isinstance(raw, str):
        if "\x00" not in raw:
            return raw, None
        return raw.replace("\x00", "\\x00"), raw.encode("utf-8", "surrogatepass")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace").replace("\x00", "\\x00"), raw
    if "\x00" in text:
        return text.replace("\x00", "\\x00"), raw
    return text, None


@dataclass(slots=True)
class _Pending:
    """A validated event waiting in a batch: its index in the caller's items, and its COPY row
    (`_row`: the envelope's columns with JSON already serialised, then the content hash)."""

    index: int
    event: ExecutorEvent
    row: Row


@dataclass
class _Outcomes:
    """Per-item results of one `emit_many` chunk, filled in by the transactions that write it."""

    outcomes: list[Outcome | None]
    reasons: dict[int, str] = field(default_factory=dict)
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    #: Set once a COPY's rows are sent and the server is busy storing them (see `emit_many`).
    copying: asyncio.Event | None = None


@dataclass(slots=True)
class _Plan:
    """What a transaction sends before its COPY, worked out from its events alone (so that
    `emit_many` can do it while the previous window's COPY is being stored)."""

    first: dict[tuple[str, str], _Pending]  # each key's first occurrence: the one written
    buckets: list[int]  # advisory-lock buckets, sorted
    ranges: tuple[str, tuple[Any, ...]] | None  # the range lookup: query and parameters


def _plan(pending: Sequence[_Pending]) -> _Plan:
    first: dict[tuple[str, str], _Pending] = {}
    for p in pending:
        first.setdefault((p.row[0], p.row[1]), p)
    buckets = sorted({_bucket(e) for e in {k[0] for k in first}})
    return _Plan(first, buckets, _ranges_query(list(first)) if first else None)


def _ranges_query(keys: list[tuple[str, str]]) -> tuple[str, tuple[Any, ...]]:
    """The range lookup of `keys` (distinct), with bounds from the client when it can tell them."""
    bounds = _decimal_bounds(keys)
    if bounds is None:
        unnest, params = _columns_param([[k[0] for k in keys], [k[1] for k in keys]])
        return _RANGES.format(unnest=unnest), params
    unnest, params = _columns_param(
        [list(bounds), [b[0] for b in bounds.values()], [b[1] for b in bounds.values()]]
    )
    return _RANGES_GIVEN.format(unnest=unnest), (*params, [b[2] for b in bounds.values()])


@dataclass
class _Reject:
    index: int
    raw: bytes | str
    source: str
    line: int | None
    reason: str


def _json_bytes(value: Any) -> bytes:
    dumped = _dumps(value)
    return dumped if isinstance(dumped, bytes) else dumped.encode("utf-8", "surrogatepass")


_JSONB_VERSION = b"\x01"  # jsonb's binary input format: this version byte, then JSON text


def content_hash(event: ExecutorEvent) -> bytes:
    """The 16-byte fingerprint stored in noetl.event.content_hash for `event`'s content.

    BLAKE2b-128 of: the JSON array `[event_type, step, status, created_at, worker_id]` (created_at
    in RFC 3339, UTC), a newline, `context` as JSON, a newline, and `meta` as JSON (or `-` when
    there is none), all serialised by orjson as the sink writes them (content orjson cannot
    write, such as integers beyond 64 bits, is hashed from the json module's text and the
    array's Python repr instead). Equal hashes mean identical content; different hashes mean
    "compare in full" (the same JSON may be spelled differently).
    """
    digest: bytes = _row(event, event.resolved_event_id())[9]
    return digest


def _row(event: ExecutorEvent, event_id: str) -> Row:
    """The COPY row: the envelope's columns (JSON serialised once, here) and the content hash."""
    head_fields = (event.event_type, event.step, event.status, event.created_at, event.worker_id)
    meta: bytes | None = None
    try:
        context = orjson.dumps(event.context)
        head = orjson.dumps(head_fields)
        if event.meta is not None:
            meta = orjson.dumps(event.meta)
    except (TypeError, orjson.JSONEncodeError):  # beyond 64-bit integers, lone surrogates
        context = _json_bytes(event.context)
        head = repr(head_fields).encode("utf-8", "surrogatepass")
        meta = None if event.meta is None else _json_bytes(event.meta)
    digest = hashlib.blake2b(
        b"".join((head, b"\n", context, b"\n", b"-" if meta is None else meta)), digest_size=16
    ).digest()
    return (
        event.execution_id,
        event_id,
        event.event_type,
        event.step,
        event.status,
        event.created_at,
        _JSONB_VERSION + context,
        event.worker_id,
        None if meta is None else _JSONB_VERSION + meta,
        digest,
    )


def _columns_param(columns: Sequence[Sequence[str | None]]) -> tuple[str, tuple[object, ...]]:
    """Bind equally long text columns: joined strings when safe, else text[] arrays."""
    joined: list[str] = []
    for col in columns:
        has_null = None in col
        text = SEPARATOR.join([NULL_MARK if v is None else v for v in col] if has_null else col)  # type: ignore[arg-type]
        # Safe when the only separators are the ones just put in, no value holds a NULL mark,
        # and the text is not empty (string_to_array('') is an empty array, not one '').
        if (
            not text
            or text.count(SEPARATOR) != len(col) - 1
            or (NULL_MARK in text and (not has_null or any(v and NULL_MARK in v for v in col)))
        ):
            return _ARRAY, tuple(list(col) for col in columns)
        joined.append(text)
    return _JOINED, tuple(joined)


def _json_text(value: bytes | None) -> str | None:
    """JSON text from a row's jsonb wire value."""
    return None if value is None else value[1:].decode("utf-8", "surrogatepass")


def _bucket(execution_id: str) -> int:
    """The advisory-lock bucket of an execution id (stable across processes and versions)."""
    return zlib.crc32(execution_id.encode("utf-8")) % LOCK_BUCKETS


def _same_content(a: _Pending, b: _Pending) -> bool:
    """Whether two events of one batch hold the same envelope apart from their key, by the rules
    the server's comparison applies to stored rows (jsonb equality)."""
    if a.row[9] == b.row[9]:
        return True
    x, y = a.event, b.event
    return bool(
        x.event_type == y.event_type
        and x.step == y.step
        and x.status == y.status
        and x.created_at == y.created_at
        and x.worker_id == y.worker_id
        and _jsonb_equal(x.context, y.context)
        and _jsonb_equal(x.meta, y.meta)
    )


def _jsonb_equal(a: Any, b: Any) -> bool:
    """JSON equality as jsonb has it: numbers by value (1 = 1.0), but `true` is not `1`, and
    object keys in any order."""
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        return a is b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_jsonb_equal(v, b[k]) for k, v in a.items())
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_jsonb_equal(v, w) for v, w in zip(a, b, strict=True))
    return False


class PostgresEventSink:
    """Durable, idempotent sink over a psycopg `AsyncConnectionPool`.

    Use it as an async context manager::

        async with PostgresEventSink("postgresql://postgres@127.0.0.1/noetl") as sink:
            await sink.emit(event)                 # returns once committed
            result = await sink.emit_many(events)  # counts inserted/duplicates/conflicts

    Parameters: `max_pool_size` connections at most (default 4); `batch_size` events per transaction
    (default 2,000); `max_pending` events queued by `emit` before callers wait (default 10,000);
    `flushers` concurrent group-commit flushes (default 2); `flush_lanes` transactions one flush
    is split into, side by side (default 2: with many callers one flush would otherwise carry
    them all while the other flusher idles); `lanes` concurrent transactions per `emit_many`
    call (default 1: on 2 cores a second lane measured ~10 % slower; events are split between
    lanes by execution id so they never wait on each other's locks); `retry_for` seconds of
    retrying a transient failure before raising `DatabaseUnavailable` (default 60);
    `connect_timeout` seconds to wait for the first connection (default 10).
    """

    def __init__(
        self,
        url: str,
        *,
        max_pool_size: int = 4,
        batch_size: int = 2000,
        max_pending: int = 10_000,
        flushers: int = 2,
        lanes: int = 1,
        flush_lanes: int = 2,
        retry_for: float = 60.0,
        connect_timeout: float = 10.0,
        application_name: str = "noetl-projector",
    ) -> None:
        if min(batch_size, max_pending, flushers, lanes, flush_lanes, max_pool_size) < 1:
            raise ValueError(
                "batch_size, max_pending, flushers, lanes, flush_lanes, max_pool_size must be >= 1"
            )
        self.url = url
        self.batch_size = batch_size
        self.lanes = lanes
        self.flush_lanes = flush_lanes
        self.retry_for = retry_for
        self.connect_timeout = connect_timeout
        self._flusher_count = flushers
        self._max_pending = max_pending
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max_pool_size,
            open=False,
            kwargs={**CONNECT_KWARGS, "application_name": application_name},
            configure=self._configure,
            # No check on checkout: a connection that broke while idle fails its first statement,
            # and the batch is retried on another one (see `_commit`).
            name="noetl-projector-sink",
        )
        self._queue: asyncio.Queue[tuple[ExecutorEvent, asyncio.Future[Outcome]]] | None = None
        self._flushers: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        # Rows carry their JSON already serialised (see `_row`); no JSON is dumped here.
        # bytes through the C dumper (the default by-oid bytea dumper is a Python one).
        conn.adapters.register_dumper(bytes, BytesBinaryDumper)

    async def open(self) -> None:
        """Open the pool, wait for a connection and check that the schema is migrated."""
        try:
            await self._pool.open(wait=True, timeout=self.connect_timeout)
            async with self._pool.connection() as conn:
                cur = await conn.execute("SELECT to_regclass('noetl.event') IS NOT NULL")
                row = await cur.fetchone()
        except Exception as exc:
            await self._pool.close()
            raise translate(exc) from exc
        if not row or not row[0]:
            await self._pool.close()
            raise SchemaMissing(
                "table noetl.event does not exist in this database: run `projector db upgrade` "
                "(or `alembic upgrade head`) first"
            )
        self._queue = asyncio.Queue(maxsize=self._max_pending)
        self._flushers = [
            asyncio.create_task(self._flush_loop(), name=f"noetl-sink-flusher-{i}")
            for i in range(self._flusher_count)
        ]

    async def close(self) -> None:
        """Write what `emit` callers are waiting for, then close the pool."""
        if self._closed:
            return
        self._closed = True
        if self._queue is not None:
            await self._queue.join()
        for task in self._flushers:
            task.cancel()
        await asyncio.gather(*self._flushers, return_exceptions=True)
        await self._pool.close()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- public API ------------------------------------------------------------------------------

    async def emit(self, event: ExecutorEvent) -> Outcome:
        """Store one event; return `"inserted"` or `"duplicate"` once it is committed.

        Concurrent calls share transactions (group commit). Raises `EventConflict` when the id is
        already stored with different content, `DatabaseUnavailable` when retries ran out.
        """
        if self._queue is None or self._closed:
            raise ProjectorError("the sink is not open: use `async with PostgresEventSink(...)`")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))  # waits when the queue is full: backpressure
        return await future

    async def emit_many(
        self,
        items: Iterable[ExecutorEvent | RawEnvelope | Mapping[str, Any]],
        *,
        source: str = "api",
    ) -> BatchResult:
        """Store a batch; invalid items are rejected (kept in noetl.event_rejected), never fatal.

        Items may be envelopes, raw JSON (`RawEnvelope`) or mappings. Written in transactions of
        `batch_size`, `lanes` of them at a time; returns after the last one commits. The next
        `batch_size * lanes` items are validated and serialised while the current ones are being
        written (that work would otherwise leave the database idle), so at most twice that many
        items are held at once, whatever the length of `items`.
        """
        if self._closed or self._queue is None:
            raise ProjectorError("the sink is not open: use `async with PostgresEventSink(...)`")
        result = BatchResult()
        writing: asyncio.Task[BatchResult] | None = None
        copying = asyncio.Event()
        offset = 0
        try:
            for chunk in self._windows(items):
                if writing is not None:
                    # Prepare while the server stores a COPY: not earlier, when the Python work
                    # would only delay the statements before it.
                    await _first_of(copying.wait(), writing)
                prepared = await self._prepare_yielding(chunk, source, offset)
                offset += len(chunk)
                if writing is not None:
                    result.extend(await writing)
                copying = asyncio.Event()
                writing = asyncio.create_task(
                    self._write_items(len(chunk), *prepared, copying=copying)
                )
            if writing is not None:
                result.extend(await writing)
                writing = None
        except asyncio.CancelledError:
            if writing is not None:  # the caller gave up: so does the write in flight
                writing.cancel()
                with contextlib.suppress(BaseException):
                    await writing
            raise
        except BaseException:
            # The caller's iterable failed (or the sink did): the window being written still
            # completes, so what the caller handed over before the failure is stored, not
            # cut off at an unknown point.
            if writing is not None:
                with contextlib.suppress(BaseException):
                    await writing
            raise
        return result

    def _windows(
        self, items: Iterable[ExecutorEvent | RawEnvelope | Mapping[str, Any]]
    ) -> Iterator[Sequence[ExecutorEvent | RawEnvelope | Mapping[str, Any]]]:
        """`items` in lists of `batch_size * lanes` (one empty list for no items)."""
        window = self.batch_size * self.lanes
        if isinstance(items, Sequence):
            for start in range(0, len(items), window):
                yield items[start : start + window]
            if not items:
                yield []
            return
        chunk: list[ExecutorEvent | RawEnvelope | Mapping[str, Any]] = []
        sent = False
        for item in items:
            chunk.append(item)
            if len(chunk) >= window:
                yield chunk
                chunk, sent = [], True
        if chunk or not sent:
            yield chunk

    async def reject(
        self, raw: bytes | str, *, source: str, reason: str, position: int | None = None
    ) -> None:
        """Keep input that is not an envelope in noetl.event_rejected (raw text, source, reason)."""
        await self._commit([], [_Reject(0, raw, source, position, reason)], _Outcomes([None]))

    # -- batches ---------------------------------------------------------------------------------

    async def _prepare_yielding(
        self,
        items: Sequence[ExecutorEvent | RawEnvelope | Mapping[str, Any]],
        source: str,
        offset: int = 0,
    ) -> tuple[list[_Pending], list[_Reject], _Plan | None]:
        """`_prepare` in slices, letting the event loop run between them: a transaction being
        written meanwhile gets its next statement sent as soon as the server answers."""
        pending: list[_Pending] = []
        rejects: list[_Reject] = []
        for start in range(0, len(items), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            self._prepare(items, source, pending, rejects, start, start + PREPARE_SLICE, offset)
        plan = _plan(pending) if self.lanes == 1 and len(pending) <= self.batch_size else None
        return pending, rejects, plan

    def _prepare(
        self,
        items: Sequence[ExecutorEvent | RawEnvelope | Mapping[str, Any]],
        source: str,
        pending: list[_Pending],
        rejects: list[_Reject],
        start: int = 0,
        stop: int | None = None,
        offset: int = 0,
    ) -> None:
        """Validate and serialise `items[start:stop]` into `pending`; the invalid into `rejects`.

        `offset` is where `items` starts in the caller's items (the position kept for a rejected
        mapping)."""
        for i in range(start, len(items) if stop is None else min(stop, len(items))):
            item = items[i]
            try:
                if item.__class__ is ExecutorEvent:
                    event = item
                    pending.append(_Pending(i, event, _row(event, event.resolved_event_id())))
                    continue
                if isinstance(item, ExecutorEvent):
                    event = item
                elif isinstance(item, RawEnvelope):
                    event = ExecutorEvent.parse_json(item.raw)
                else:
                    event = ExecutorEvent.model_validate(item)
                pending.append(_Pending(i, event, _row(event, event.resolved_event_id())))
            except ValidationError as exc:
                reason = describe_validation_error(exc)
                rejects.append(self._reject_of(i, item, source, reason, offset))
            except (TypeError, ValueError) as exc:  # an envelope built without validation
                reason = f"not storable: {exc}"
                rejects.append(self._reject_of(i, item, source, reason, offset))

    @staticmethod
    def _reject_of(i: int, item: object, source: str, reason: str, offset: int = 0) -> _Reject:
        if isinstance(item, RawEnvelope):
            return _Reject(i, item.raw, item.source, item.position, reason)
        if isinstance(item, ExecutorEvent):
            try:
                raw = item.model_dump_json()
            except (TypeError, ValueError):
                raw = repr(item)
            return _Reject(i, raw, source, offset + i, reason)
        try:
            raw = json.dumps(item, ensure_ascii=False, default=repr)
        except (TypeError, ValueError):
            raw = repr(item)
        return _Reject(i, raw, source, offset + i, reason)

    async def _write_items(
        self,
        count: int,
        pending: list[_Pending],
        rejects: list[_Reject],
        plan: _Plan | None = None,
        copying: asyncio.Event | None = None,
    ) -> BatchResult:
        """Write `count` prepared items; the result has one outcome per item."""
        state = _Outcomes([None] * count, copying=copying)
        await self._write_split(pending, rejects, state, plan=plan)
        outcomes = state.outcomes
        result = BatchResult(
            inserted=outcomes.count("inserted"),
            duplicates=outcomes.count("duplicate"),
            conflicts=outcomes.count("conflict"),
            conflict_ids=state.conflicts,
        )
        if result.inserted + result.duplicates + result.conflicts < len(outcomes):
            lines = {r.index: r.line for r in rejects}
            result.rejected = [
                Rejection(i, state.reasons.get(i, "not stored"), lines.get(i))
                for i, o in enumerate(outcomes)
                if o is None or o == "rejected"
            ]
            outcomes = [o if o is not None else "rejected" for o in outcomes]
        result.outcomes = outcomes  # type: ignore[assignment]
        return result

    async def _write_split(
        self,
        pending: list[_Pending],
        rejects: list[_Reject],
        state: _Outcomes,
        lanes: int | None = None,
        plan: _Plan | None = None,
    ) -> None:
        """Write `pending` in `lanes` concurrent sequences of transactions, split by lock bucket:
        lanes never wait for each other's advisory locks, so their transactions really run side by
        side (one fills its COPY while another is looked up or commits). `plan` is `pending`'s,
        used when it is written in one transaction."""
        count = self.lanes if lanes is None else lanes
        if count == 1 and plan is not None and 0 < len(pending) <= self.batch_size:
            await self._commit(pending, rejects, state, plan)
            return
        if count == 1:
            await self._write_lane(pending, rejects, state)
            return
        split: list[list[_Pending]] = [[] for _ in range(count)]
        for p in pending:
            split[_bucket(p.row[0]) % count].append(p)
        done = await asyncio.gather(
            *(
                self._write_lane(lane, rejects if n == 0 else [], state)
                for n, lane in enumerate(split)
                if lane or (n == 0 and rejects)
            ),
            return_exceptions=True,
        )
        for lane_result in done:
            if isinstance(lane_result, BaseException):
                raise lane_result

    async def _write_lane(
        self, lane: list[_Pending], rejects: list[_Reject], state: _Outcomes
    ) -> None:
        for start in range(0, max(len(lane), 1), self.batch_size):
            await self._commit(lane[start : start + self.batch_size], rejects, state)
            rejects = []

    async def _commit(
        self,
        pending: list[_Pending],
        rejects: list[_Reject],
        state: _Outcomes,
        plan: _Plan | None = None,
    ) -> None:
        """Write one batch in one transaction, retrying transient failures; fill in `state`."""
        for r in rejects:
            state.outcomes[r.index] = "rejected"
            state.reasons[r.index] = r.reason
        if not pending and not rejects:
            return
        earlier_txids: set[str] = set()
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                await self._transaction(pending, rejects, state, earlier_txids, plan)
                return
            except _DataProblem as problem:
                # One value the database refuses (should validation miss one) must not sink the
                # batch: bisect to it, reject it with the server's reason, store the rest.
                if len(pending) == 1:
                    bad = pending[0]
                    raw = bad.event.model_dump_json()
                    rejects = [*rejects, _Reject(bad.index, raw, "sink", None, problem.reason)]
                    state.outcomes[bad.index] = "rejected"
                    state.reasons[bad.index] = problem.reason
                    pending, plan = [], None
                    continue
                half = len(pending) // 2
                await self._commit(pending[:half], [], state)
                await self._commit(pending[half:], rejects, state)
                return
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, pgerrors.UniqueViolation)):
                    raise translate(exc) from exc
                if time.monotonic() + delay > deadline:
                    raise DatabaseUnavailable(
                        f"gave up storing a batch of {len(pending)} events after "
                        f"{self.retry_for:.0f}s of retries: {str(exc).strip()}"
                    ) from exc
                log.warning("transient database error, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 5.0)

    async def _transaction(
        self,
        pending: list[_Pending],
        rejects: list[_Reject],
        state: _Outcomes,
        earlier_txids: set[str],
        plan: _Plan | None = None,
    ) -> None:
        if plan is None:
            plan = _plan(pending)
        first, buckets = plan.first, plan.buckets
        stored: dict[tuple[str, str], Any] = {}
        changed: set[int] = set()
        # The pool's connection block commits at its end (rolls back on an error): the implicit
        # BEGIN of a non-autocommit connection then travels in the pipeline below, with the locks
        # and the lookup that must follow them, in one round trip.
        async with self._pool.connection() as conn:
            try:
                cur = conn.cursor()
                ranges = conn.cursor()
                async with conn.pipeline():
                    if plan.ranges is not None:
                        await cur.execute(_BEGIN_NOTIFY, (LOCK_CLASS, buckets, NOTIFY_CHANNEL))
                        await ranges.execute(*plan.ranges, binary=True, prepare=True)
                    else:
                        await cur.execute(_BEGIN, (LOCK_CLASS, buckets))
                begin = await cur.fetchone()
                assert begin is not None
                retried = bool(earlier_txids)
                earlier_txids.add(str(begin[0]))
                fresh: Iterable[_Pending] = ()
                if first:
                    stored = await self._read_ranges(ranges, first)
                    if stored:
                        fresh = [p for key, p in first.items() if key not in stored]
                        changed = await self._changed(cur, pending, stored, earlier_txids)
                    else:
                        fresh = first.values()
                if fresh:
                    async with cur.copy(_COPY) as copy:
                        copy.set_types(_COPY_TYPES)
                        for p in fresh:
                            await copy.write_row(p.row)
                        if state.copying is not None:
                            state.copying.set()
                if rejects and not (retried and await self._committed(cur, earlier_txids)):
                    await cur.executemany(
                        _REJECT,
                        [(*_raw_columns(r.raw), r.source, r.line, r.reason) for r in rejects],
                    )
            except pgerrors.DataError as exc:
                raise _DataProblem(str(exc.diag.message_primary or exc)) from exc
        outcomes = state.outcomes
        conflicts = state.conflicts
        if not stored and len(first) == len(pending):  # the common case: all new, all distinct
            for p in pending:
                outcomes[p.index] = "inserted"
            return
        for p in pending:
            key = (p.row[0], p.row[1])
            hit = stored.get(key)
            if hit is None or hit[3] in earlier_txids:  # new, or ours from a lost COMMIT
                winner = first[key]
                if p is winner or _same_content(winner, p):
                    outcomes[p.index] = "inserted" if p is winner else "duplicate"
                    continue
            elif p.index not in changed:
                outcomes[p.index] = "duplicate"
                continue
            outcomes[p.index] = "conflict"
            conflicts.append(key)

    @classmethod
    async def _read_ranges(
        cls, cur: psycopg.AsyncCursor[Any], first: dict[tuple[str, str], _Pending]
    ) -> dict[tuple[str, str], Any]:
        """The stored rows of `first`'s keys: from the range scans, then key by key for
        executions whose range holds too many other rows to be read whole."""
        keys = list(first)
        wanted = set(keys)
        stored: dict[tuple[str, str], Any] = {}
        seen: dict[str, int] = {}
        limits: dict[str, int] = {}
        for r in await cur.fetchall():
            key = (r[0], r[1])
            seen[r[0]] = seen.get(r[0], 0) + 1
            limits[r[0]] = _range_limit(r[5])
            if key in wanted:
                stored[key] = r
        dense = {x for x, n in seen.items() if n >= limits[x]}
        if dense:
            probe = [k for k in keys if k[0] in dense]
            times = [first[k].row[5] for k in probe]
            stored.update(await cls._probe_keys(cur, probe, times))
        return stored

    @staticmethod
    async def _probe_keys(
        cur: psycopg.AsyncCursor[Any], keys: list[tuple[str, str]], times: list[datetime]
    ) -> dict[tuple[str, str], Any]:
        """The stored rows of `keys` (created at `times`), probed one by one: in the batch's
        months, and everywhere for the executions that have rows outside them (few keys:
        everywhere at once)."""
        if len(keys) < WINDOW_MIN_KEYS:
            unnest, params = _columns_param([[k[0] for k in keys], [k[1] for k in keys]])
            await cur.execute(
                _lookup_sql(unnest, windowed=False), params, binary=True, prepare=True
            )
            return {(r[0], r[1]): r for r in await cur.fetchall()}
        lo, hi = _month_window(times)
        executions = sorted({k[0] for k in keys})
        unnest, params = _columns_param([executions])
        await cur.execute(
            _STORED_EXECUTIONS.format(unnest=unnest), (lo, hi, lo, hi, *params), prepare=True
        )
        known = dict(await cur.fetchall())
        if not known:
            return {}
        spread = {x for x, outside in known.items() if outside}
        keys = [k for k in keys if k[0] in known]
        unnest, params = _columns_param([[k[0] for k in keys], [k[1] for k in keys]])
        await cur.execute(
            _lookup_sql(unnest, windowed=True), (*params, lo, hi), binary=True, prepare=True
        )
        stored = {(r[0], r[1]): r for r in await cur.fetchall()}
        if spread:
            wide = [k for k in keys if k[0] in spread]
            unnest, params = _columns_param([[k[0] for k in wide], [k[1] for k in wide]])
            await cur.execute(_lookup_sql(unnest, windowed=False), params, binary=True)
            stored.update({(r[0], r[1]): r for r in await cur.fetchall()})
        return stored

    @staticmethod
    async def _committed(cur: psycopg.AsyncCursor[Any], txids: set[str]) -> bool:
        """Whether one of `txids` (earlier attempts at this batch) committed after all: its COMMIT
        went through although the connection died, so its rejected items are stored already."""
        await cur.execute(
            "SELECT coalesce(bool_or(pg_xact_status(x::xid8) = 'committed'), false)"
            " FROM unnest(%s::text[]) AS x",
            (sorted(txids),),
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    @staticmethod
    async def _changed(
        cur: psycopg.AsyncCursor[Any],
        pending: list[_Pending],
        stored: dict[tuple[str, str], Any],
        earlier_txids: set[str],
    ) -> set[int]:
        """Indexes of items whose key is stored (not by us) with different content."""
        changed: set[int] = set()
        candidates: list[_Pending] = []
        for p in pending:
            hit = stored.get((p.row[0], p.row[1]))
            if hit is None or hit[3] in earlier_txids:
                continue
            if hit[2] != p.row[5]:  # another created_at: another partition, surely different
                changed.add(p.index)
            elif hit[4] != p.row[9]:  # no hash, or another one: compare in full
                candidates.append(p)
        if candidates:
            rows = [p.row for p in candidates]
            unnest, params = _columns_param(
                [
                    [r[0] for r in rows],
                    [r[1] for r in rows],
                    [r[5].isoformat() for r in rows],
                    [r[2] for r in rows],
                    [r[3] for r in rows],
                    [r[4] for r in rows],
                    [_json_text(r[6]) for r in rows],
                    [r[7] for r in rows],
                    [_json_text(r[8]) for r in rows],
                ]
            )
            await cur.execute(_compare_sql(unnest), params)
            changed.update(candidates[int(r[0]) - 1].index for r in await cur.fetchall())
        return changed

    # -- group commit ----------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        assert self._queue is not None
        queue = self._queue
        while True:
            batch = [await queue.get()]
            while len(batch) < self.batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                await self._flush(batch)
            finally:
                for _ in batch:
                    queue.task_done()

    async def _flush(self, batch: list[tuple[ExecutorEvent, asyncio.Future[Outcome]]]) -> None:
        pending = [
            _Pending(i, event, _row(event, event.resolved_event_id()))
            for i, (event, _) in enumerate(batch)
        ]
        state = _Outcomes([None] * len(batch))
        try:
            await self._write_split(pending, [], state, self.flush_lanes)
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.set_exception(DatabaseUnavailable("the sink was closed mid-write"))
            raise
        except Exception as exc:
            error = translate(exc)
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        for i, (event, future) in enumerate(batch):
            if future.done():  # the caller was cancelled
                continue
            outcome = state.outcomes[i]
            if outcome == "conflict":
                future.set_exception(EventConflict(event.execution_id, event.resolved_event_id()))
            elif outcome == "inserted" or outcome == "duplicate":
                future.set_result(outcome)
            else:
                reason = state.reasons.get(i, "the database refused this event")
                future.set_exception(InvalidEnvelope(reason, i))


async def _first_of(waiting: Awaitable[Any], task: asyncio.Task[Any]) -> None:
    """Return when `waiting` completes or `task` ends, whichever is first."""
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class _DataProblem(Exception):
    """The database refused a value in the batch (SQLSTATE class 22)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
