"""`PostgresEventSink`: stores envelopes in `noetl.event` exactly once, as fast as COPY allows.

How one batch is written (one transaction, retried as a whole):

1. Envelopes are validated and serialised (JSON once, for COPY and for the content hash:
   :func:`projector.batch.prepare`; raw JSON in the sinks' own form becomes a row without an
   `ExecutorEvent` in between, :func:`projector.batch.encode_raw`); the ones that fail, whatever
   they raise, go to
   `noetl.event_rejected` with their position and reason, and the rest of the batch is stored.
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

The statements are the `sink.*` queries of `projector/sql/sink.sql`, sent by
:mod:`projector.pglookup` (steps 2, 3 and the rejections) and by this module (the COPY); the pure
part (rows, hashes, which item is fresh, duplicate or conflict) is :mod:`projector.batch`.

`emit_many` prepares (step 1) the next window of events while the server stores the current
window's COPY, so Python work and database work overlap.

Rows the database refuses: when it refuses a row validation let through (SQLSTATE classes 22,
23 but for unique violations, and 54: a value out of range, a check constraint, an index entry
over 2,704 bytes; or a text value psycopg cannot send), the batch is bisected down to that row,
which is rejected with the server's reason, and the others are stored. Only a failing batch pays
for this: nothing is checked per event beforehand.

Retries: transient failures (connection lost, server restarting, serialization failures, a unique
violation from a writer that bypassed the locks, a lock wait past `lock_timeout`) roll back and
replay the batch with exponential backoff (:class:`projector.backoff.Backoff`: 0.05 s doubling to
5 s, for `retry_for` seconds). Since the replay repeats the lookup, no retry stores a row twice;
rows found with the transaction id of an earlier attempt whose COMMIT was lost in flight are
counted as inserted. The sink's sessions set their own timeouts (:mod:`projector.timeouts`): no
statement_timeout, and `lock_timeout` (default 5 s) on every lock wait, so that a session holding
one of the sink's locks stalls a writer for `retry_for` seconds at most; then
:class:`~projector.errors.LockTimeout` names that session (pid, application_name, user, how long
its transaction has been open).

`emit()` group-commits (:mod:`projector.groupcommit`): callers queue their event and wait; a
flusher writes everything queued so far in one transaction and wakes them all once it is
committed, each with its own outcome. The queue is bounded, so a slow database slows callers down
instead of growing memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

import psycopg
from psycopg import errors as pgerrors
from psycopg.types.string import BytesBinaryDumper
from psycopg_pool import AsyncConnectionPool

from . import batch, pglookup
from .backoff import Backoff
from .batch import (
    BatchResult,
    Item,
    Key,
    Outcome,
    Outcomes,
    Pending,
    RawEnvelope,
    RejectedItem,
    Rejection,
    content_hash,
    describe_validation_error,
)
from .database import check_connection, with_connect_timeout
from .envelope import ExecutorEvent
from .errors import (
    DatabaseUnavailable,
    LockTimeout,
    ProjectorError,
    SchemaMissing,
    is_transient,
    translating,
)
from .groupcommit import GroupCommit
from .pglookup import LOCK_BUCKETS, Plan, lock_bucket
from .queries import query
from .timeouts import SINK_LOCK_TIMEOUT, session_kwargs

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

#: Items validated and serialised between two turns of the event loop (see `_prepare_yielding`).
PREPARE_SLICE = 50

_COPY = query("sink.copy")


class PostgresEventSink:
    """Durable, idempotent sink over a psycopg `AsyncConnectionPool`.

    Use it as an async context manager::

        async with PostgresEventSink("postgresql://postgres@127.0.0.1/noetl") as sink:
            await sink.emit(event)                 # returns once committed
            result = await sink.emit_many(events)  # counts inserted/duplicates/conflicts

    Parameters: `max_pool_size` connections at most (default 4); `batch_size` events per transaction
    (default 2,000); `max_pending` events queued by `emit` before callers wait (default 10,000);
    `flushers` concurrent group-commit flushes (default 2); `flush_lanes` transactions one flush
    is split into, side by side (default 1: a transaction costs the client CPU whatever its
    size; with 200 callers, two lanes of 100 events took 22-26 us of client CPU an event against
    14-18 for one transaction of 200, at about 0.6x its rate, on 2 shared cores); `lanes`
    concurrent transactions per `emit_many` call (default 1: on 2 cores a second lane measured
    ~10 % slower; events are split between lanes by execution id so they never wait on each
    other's locks); `retry_for` seconds of retrying a transient failure before raising
    `DatabaseUnavailable` (default 60); `connect_timeout` seconds to wait for a connection
    (default 10; a ``connect_timeout`` in the URL wins); `lock_timeout` seconds one lock wait
    may last before the attempt is retried (default :data:`~projector.timeouts.SINK_LOCK_TIMEOUT`,
    5; 0: no limit).
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
        flush_lanes: int = 1,
        retry_for: float = 60.0,
        connect_timeout: float = 10.0,
        lock_timeout: float = SINK_LOCK_TIMEOUT,
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
        self.lock_timeout = lock_timeout
        self._flusher_count = flushers
        self._max_pending = max_pending
        self._pool = AsyncConnectionPool(
            with_connect_timeout(url, connect_timeout),
            min_size=1,
            max_size=max_pool_size,
            open=False,
            kwargs={
                **session_kwargs(lock_timeout=lock_timeout),
                "application_name": application_name,
                # The write transaction sends its own BEGIN with its first statements (see
                # `pglookup.begin`); leaving the connection block commits it, or rolls it back.
                "autocommit": True,
            },
            configure=self._configure,
            # No check on checkout: a connection that broke while idle fails its first statement,
            # and the batch is retried on another one (see `_commit`).
            name="noetl-projector-sink",
        )
        self._group: GroupCommit | None = None  # emit()'s callers, once open
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------

    @staticmethod
    async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
        # Rows carry their JSON already serialised (see `batch.encode`); no JSON is dumped here.
        # bytes through the C dumper (the default by-oid bytea dumper is a Python one).
        conn.adapters.register_dumper(bytes, BytesBinaryDumper)

    async def open(self) -> None:
        """Open the pool, wait for a connection and check that the schema is migrated.

        One direct connection comes first: an unreachable server, one that does not answer
        within `connect_timeout`, or a refused login raises `DatabaseUnavailable` at once with
        the server's reason (the pool would retry until its timeout).
        """
        await check_connection(self.url, self.connect_timeout)
        try:
            with translating():
                await self._pool.open(wait=True, timeout=self.connect_timeout)
                async with self._pool.connection() as conn:
                    cur = await conn.execute(query("sink.schema_present"))
                    row = await cur.fetchone()
        except BaseException:
            await self._pool.close()
            raise
        if not row or not row[0]:
            await self._pool.close()
            raise SchemaMissing(
                "table noetl.event does not exist in this database: run `projector db upgrade` "
                "(or `alembic upgrade head`) first"
            )
        self._group = GroupCommit(
            functools.partial(self._write_split, lanes=self.flush_lanes),
            batch_size=self.batch_size,
            max_pending=self._max_pending,
            flushers=self._flusher_count,
        )

    async def close(self) -> None:
        """Write what `emit` callers are waiting for, then close the pool."""
        if self._closed:
            return
        self._closed = True
        if self._group is not None:
            await self._group.close()
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

        Concurrent calls share transactions (group commit, see :mod:`projector.groupcommit`).
        Raises `EventConflict` when the id is already stored with different content,
        `InvalidEnvelope` when the event cannot be stored (the database refused it; it is kept
        in noetl.event_rejected), `DatabaseUnavailable` when retries ran out (`LockTimeout`,
        a subclass, when lock waits did).
        """
        if self._group is None or self._closed:
            raise ProjectorError("the sink is not open: use `async with PostgresEventSink(...)`")
        return await self._group.emit(event)

    async def emit_many(
        self,
        items: Iterable[Item],
        *,
        source: str = "api",
    ) -> BatchResult:
        """Store a batch; invalid items are rejected (kept in noetl.event_rejected), never fatal.

        An item that fails validation, or whose row the database refuses, is rejected with its
        position and reason, alone: everything else is stored.

        Items may be envelopes, raw JSON (`RawEnvelope`) or mappings. Written in transactions of
        `batch_size`, `lanes` of them at a time; returns after the last one commits. The next
        `batch_size * lanes` items are validated and serialised while the current ones are being
        written (that work would otherwise leave the database idle), so at most twice that many
        items are held at once, whatever the length of `items`.
        """
        if self._closed or self._group is None:
            raise ProjectorError("the sink is not open: use `async with PostgresEventSink(...)`")
        result = BatchResult()
        writing: asyncio.Task[BatchResult] | None = None
        copying = asyncio.Event()
        offset = 0
        try:
            for chunk in batch.windows(items, self.batch_size * self.lanes):
                if writing is not None:
                    # Prepare while the server stores a COPY: not earlier, when the Python work
                    # would only delay the statements before it.
                    await _first_of(copying.wait(), writing)
                prepared = await self._prepare_yielding(chunk, source, offset)
                offset += len(chunk)
                if writing is not None:
                    result.extend(await writing)
                copying = asyncio.Event()
                state = batch.Outcomes(
                    [None] * len(chunk),
                    copying=copying,
                    items=chunk,
                    source=source,
                    offset=offset - len(chunk),
                )
                writing = asyncio.create_task(self._write_items(state, *prepared))
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

    # -- batches ---------------------------------------------------------------------------------

    async def _prepare_yielding(
        self, items: Sequence[Item], source: str, offset: int = 0
    ) -> tuple[list[Pending], list[RejectedItem], Plan | None]:
        """`batch.prepare` in slices, letting the event loop run between them: a transaction being
        written meanwhile gets its next statement sent as soon as the server answers."""
        pending: list[Pending] = []
        rejects: list[RejectedItem] = []
        for start in range(0, len(items), PREPARE_SLICE):
            if start:
                await asyncio.sleep(0)
            batch.prepare(items, source, pending, rejects, start, start + PREPARE_SLICE, offset)
        plan = (
            pglookup.plan(pending) if self.lanes == 1 and len(pending) <= self.batch_size else None
        )
        return pending, rejects, plan

    async def _write_items(
        self,
        state: Outcomes,
        pending: list[Pending],
        rejects: list[RejectedItem],
        plan: Plan | None = None,
    ) -> BatchResult:
        """Write the prepared items of `state`'s chunk; the result has one outcome per item."""
        await self._write_split(pending, rejects, state, plan=plan)
        return state.result(rejects)

    async def _write_split(
        self,
        pending: list[Pending],
        rejects: list[RejectedItem],
        state: Outcomes,
        lanes: int | None = None,
        plan: Plan | None = None,
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
        split: list[list[Pending]] = [[] for _ in range(count)]
        for p in pending:
            split[lock_bucket(p.key[0]) % count].append(p)
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
        self, lane: list[Pending], rejects: list[RejectedItem], state: Outcomes
    ) -> None:
        for start in range(0, max(len(lane), 1), self.batch_size):
            await self._commit(lane[start : start + self.batch_size], rejects, state)
            rejects = []

    @translating()
    async def _commit(
        self,
        pending: list[Pending],
        rejects: list[RejectedItem],
        state: Outcomes,
        plan: Plan | None = None,
    ) -> None:
        """Write one batch in one transaction, retrying transient failures; fill in `state`."""
        for r in rejects:
            state.reject(r.index, r.reason)
        if not pending and not rejects:
            return
        earlier_txids: set[str] = set()
        backoff = Backoff(0.05, factor=2, cap=5.0, jitter=0.5, deadline=self.retry_for)
        started = time.monotonic()
        while True:
            try:
                await self._transaction(pending, rejects, state, earlier_txids, plan)
                return
            except _Refused as refused:
                # A row the database refuses (a value validation let through, an index entry
                # over its size limit) must not sink the batch: bisect to it, reject it with
                # the server's reason, store the rest.
                if len(pending) == 1:
                    rejects = [*rejects, state.refused(pending[0], refused.reason)]
                    pending, plan = [], None
                    continue
                half = len(pending) // 2
                await self._commit(pending[:half], [], state)
                await self._commit(pending[half:], rejects, state)
                return
            except Exception as exc:
                if not (is_transient(exc) or isinstance(exc, pgerrors.UniqueViolation)):
                    raise
                delay = backoff.next_delay()
                if delay is None:
                    raise await self._gave_up(exc, pending, time.monotonic() - started) from exc
                if _lock_timed_out(exc):
                    log.warning(
                        "a lock wait of the sink ran past lock_timeout (%.1f s), retrying in "
                        "%.2f s",
                        self.lock_timeout,
                        delay,
                    )
                else:
                    log.warning("transient database error, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)

    async def _gave_up(
        self, exc: Exception, pending: list[Pending], waited: float
    ) -> ProjectorError:
        """The error to raise once `waited` seconds of retries ran out on `exc`: for lock waits,
        a :class:`LockTimeout` naming the sessions that hold what the batch waited for."""
        after = f"after {waited:.0f}s of retries"
        if not _lock_timed_out(exc):
            return DatabaseUnavailable(
                f"gave up storing a batch of {len(pending)} events {after}: {str(exc).strip()}"
            )
        buckets = sorted({lock_bucket(p.key[0]) for p in pending})
        try:
            async with self._pool.connection(timeout=self.connect_timeout) as conn:
                found = await pglookup.blockers(conn.cursor(), buckets, waited)
        except Exception as diagnosis:  # the error must still be raised, whatever this meets
            found = []
            log.warning("could not find the sessions holding the sink's locks: %s", diagnosis)
        who = "; ".join(found) if found else "no session holds them now (it may have ended)"
        return LockTimeout(
            f"gave up storing a batch of {len(pending)} events {after}: every attempt waited "
            f"longer than lock_timeout ({self.lock_timeout:g} s) for a lock. Holding it: {who}. "
            "End that session's transaction (or, if the waits are legitimate, raise the sink's "
            "lock_timeout or retry_for)",
            found,
        )

    async def _transaction(
        self,
        pending: list[Pending],
        rejects: list[RejectedItem],
        state: Outcomes,
        earlier_txids: set[str],
        plan: Plan | None = None,
    ) -> None:
        """One attempt at a batch: (1) BEGIN with the locks and the range lookup in one round
        trip; (2) the stored rows of the batch's keys; (3) which of them differ in content;
        (4) COPY the new rows; (5) keep the rejections (each once: those with a position by their
        unique key, emit()'s unless an earlier attempt committed them already); then classify
        each item (after the commit: the pool's connection block commits at its end, and rolls
        back on an error)."""
        if plan is None:
            plan = pglookup.plan(pending)
        first = plan.first
        stored: dict[Key, batch.StoredRow] = {}
        changed: set[int] = set()
        async with self._pool.connection() as conn:
            try:
                cur, ranges = conn.cursor(), conn.cursor()
                retried = bool(earlier_txids)
                earlier_txids.add(await pglookup.begin(cur, ranges, plan))  # (1)
                if first:
                    stored = await pglookup.read_ranges(ranges, first)  # (2)
                    if stored:
                        changed, candidates = batch.triage(pending, stored, earlier_txids)
                        if candidates:
                            changed |= await pglookup.differing(cur, candidates)  # (3)
                rows = batch.fresh(first, stored)
                if rows:
                    async with cur.copy(_COPY) as copy:  # (4)
                        copy.set_types(batch.COPY_TYPES)
                        for p in rows:
                            await copy.write_row(p.row)
                        if state.copying is not None:
                            state.copying.set()
                if rejects and retried:
                    # A rejection with a position is kept once by its unique key, whatever an
                    # earlier attempt did; only emit()'s (no position) need to know whether an
                    # earlier attempt's COMMIT went through.
                    unplaced = [r for r in rejects if r.line is None]
                    if unplaced and await pglookup.committed(cur, earlier_txids):
                        rejects = [r for r in rejects if r.line is not None]
                if rejects:
                    try:
                        await pglookup.insert_rejects(cur, rejects)  # (5)
                    except Exception as exc:
                        if _refusal(exc) is None:
                            raise
                        # Never bisected (the rows could only be refused again): columns()
                        # makes every value storable, so only a trigger or constraint added
                        # to noetl.event_rejected gets here.
                        raise ProjectorError(
                            f"noetl.event_rejected refused a rejection: {str(exc).strip()}"
                        ) from exc
            except Exception as exc:
                reason = _refusal(exc)
                if reason is None:
                    raise
                raise _Refused(reason) from exc
        batch.classify(
            pending, first, stored, changed, earlier_txids, state.outcomes, state.conflicts
        )


async def _first_of(waiting: Awaitable[Any], task: asyncio.Task[Any]) -> None:
    """Return when `waiting` completes or `task` ends, whichever is first."""
    waiter = asyncio.ensure_future(waiting)
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


class _Refused(Exception):
    """The database refused a row of the batch (see `_refusal`)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


#: SQLSTATE classes of a row the database refuses: data exceptions (22: a value out of range, an
#: invalid byte sequence), integrity violations (23, a unique violation excepted: that one is a
#: race with a writer that bypassed the locks, and retried) and program limits (54: an index
#: entry over 2,704 bytes).
REFUSAL_CLASSES = ("22", "23", "54")


def _refusal(exc: BaseException) -> str | None:
    """The reason to reject a row for, when `exc` is the database refusing one (None for other
    errors). A text value psycopg cannot send (a lone surrogate, or NUL in a parameter) counts:
    it is refused in the client instead of the server."""
    if isinstance(exc, UnicodeEncodeError):
        return f"the database cannot store it: {exc}"
    state = getattr(exc, "sqlstate", None)
    if state is None:
        return (
            f"the database cannot store it: {exc}" if isinstance(exc, psycopg.DataError) else None
        )
    if state[:2] not in REFUSAL_CLASSES or state == "23505":
        return None
    diag = getattr(exc, "diag", None)
    message = getattr(diag, "message_primary", None) or str(exc).strip()
    return f"the database refused it ({state}): {message}"


def _lock_timed_out(exc: BaseException) -> bool:
    """Whether `exc` is a lock wait cancelled by lock_timeout (the sink never locks NOWAIT, so
    every lock_not_available is one)."""
    return getattr(exc, "sqlstate", None) == "55P03"
