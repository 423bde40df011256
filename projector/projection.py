"""The incremental projector: keeps `noetl.step_state` / `noetl.execution_state` equal to the views.

Gap-safe reading
----------------
Every event row carries the id of the transaction that inserted it (`txid`, an `xid8`). Commit
order differs from id order, so "the last id seen" is not a safe checkpoint. Each projector
transaction instead takes a *fence*: `pg_snapshot_xmin(pg_current_snapshot())`, the oldest
transaction still in progress. Every transaction below the fence has ended, so every committed
event with `txid < fence` is visible and no later commit can add one. The projector only reads
`checkpoint <= txid < fence` and then moves the checkpoint; rows of transactions still open stay
above the fence until they end. (A long-running transaction anywhere on the server holds the fence
back: projection waits for it, the views stay exact meanwhile.)

One chunk, one transaction
--------------------------
:func:`project_chunk` takes the advisory lock of the projection name (another instance holding it
means that instance is doing the work), takes the fence before the transaction writes anything,
locks the checkpoint row, picks the chunk `[checkpoint, upper)` of at most `max_events` rows
(never splitting one transaction's rows), recomputes exactly the steps and executions those rows
touch with the same rules as the views (the steps named by the chunk's events, and the steps of an
execution whose cancel the chunk makes or undoes), upserts them and moves the checkpoint, then
commits. A crash anywhere rolls all of it back; the next run replays the
same chunk.

Rebuild
-------
:func:`rebuild` recomputes both tables from the whole log with set-based SQL in one transaction
under the same lock. Readers of the views and tables are never blocked (MVCC); they see the old
rows until it commits. The fold (the PL/pgSQL transition function of ``noetl.step_fold``, once per
event, one core per statement) is split between worker connections by ranges of execution ids:
each imports the rebuild's snapshot (``pg_export_snapshot``), folds its executions and streams
the rows back as ``COPY`` text, which the rebuild's own transaction writes with ``COPY``; the
workers write nothing but a temporary table, so the swap stays one commit.

The statements are the named queries ``projection.*`` in ``projector/sql/projection.sql``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .backoff import Backoff
from .channels import NOTIFY_CHANNEL, PROJECTOR_LOCK_CLASS
from .errors import ProjectorError, is_transient, translating
from .queries import query
from .timeouts import PROJECTION_KWARGS, session_kwargs

__all__ = [
    "DEFAULT_NAME",
    "REBUILD_WORKERS",
    "ChunkObserver",
    "ChunkResult",
    "Projector",
    "RebuildResult",
    "Shard",
    "catch_up",
    "checkpoint",
    "connect",
    "horizon",
    "project_chunk",
    "rebuild",
]

log = logging.getLogger(__name__)

#: Name of the checkpoint row of the standard projection.
DEFAULT_NAME: Final = "default"
#: Seconds between looks while rows wait for the fence or for another instance.
STALL_WAIT: Final = 0.05
#: Longest wait between retries of `Projector.run` after a transient database error.
RETRY_CAP: Final = 30.0

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class ChunkResult:
    """What one projector transaction did."""

    events: int
    steps: int
    executions: int
    position: int
    #: Rows exist at or above `position` (not yet committed, or waiting for the fence).
    pending: bool
    #: The chunk held rows (a shard's chunk may hold none of its own executions' and still
    #: count); false when nothing was read below the fence.
    advanced: bool = True


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the executions whose hashtext(execution_id), read as 0 .. 2^32-1,
    is `index` modulo `count`. Its checkpoint row is ``<name>/<index>-of-<count>``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= K < N")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`K/N` (for example 0/2) as a shard."""
        k, sep, n = text.partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise ValueError(f"shard {text!r}: expected K/N, for example 0/2")
        return cls(int(k), int(n))

    def checkpoint_name(self, name: str) -> str:
        """The name of this shard's checkpoint row in projection `name`."""
        return f"{name}/{self.index}-of-{self.count}"


#: Called by :class:`Projector` after each transaction: its result and how many seconds it took
#: (:meth:`projector.metrics.ProjectMetrics.on_chunk`).
ChunkObserver = Callable[[ChunkResult, float], None]


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild wrote."""

    steps: int
    executions: int
    position: int


async def _position(conn: AsyncConn, text: LiteralString, params: Any = None) -> int | None:
    """The first column of a one-row query returning a position as text (None for SQL null)."""
    cur = await conn.execute(text, params)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]) if row[0] is not None else None


async def _fence_and_checkpoint(
    conn: AsyncConn, name: str, shard: Shard | None = None
) -> tuple[int, int]:
    # The fence first: after the checkpoint INSERT this transaction has an id of its own.
    fence = await _position(conn, query("projection.fence"))
    # The row is made only when it is missing (the first run, or the first after shards ran:
    # making a shard set removes the unsharded row). For shards, an INSERT over the other
    # shards' rows would also wait for their open chunks (a row being updated).
    own = shard.checkpoint_name(name) if shard is not None else name
    start = await _locked_checkpoint(conn, own)
    if start is None:
        if shard is None:
            await conn.execute(query("projection.ensure_checkpoint"), {"name": name})
        else:
            await conn.execute(
                query("projection.ensure_shard_checkpoints"), {"base": name, "n": shard.count}
            )
        start = await _locked_checkpoint(conn, own)
    assert fence is not None and start is not None
    return fence, start


async def _locked_checkpoint(conn: AsyncConn, name: str) -> int | None:
    """The named checkpoint, locked (None when its row does not exist yet)."""
    cur = await conn.execute(query("projection.read_checkpoint"), (name,))
    row = await cur.fetchone()
    return int(row[0]) if row is not None else None


async def _chunk_upper(
    conn: AsyncConn, start: int, fence: int, max_events: int
) -> tuple[int, bool]:
    """The chunk's end, and whether any row lies in it."""
    # Walk the txid indexes in order (a merge of index-only scans, stopping after max_events
    # rows). Left alone, the planner sorts every unread row instead once there are many of them,
    # which made each chunk of a long catch-up cost as much as all the rest.
    await conn.execute(query("projection.plan_by_index"))
    cur = await conn.execute(
        query("projection.chunk_bounds"),
        {"start": str(start), "fence": str(fence), "n": max_events},
    )
    row = await cur.fetchone()
    await conn.execute(query("projection.plan_freely"))
    assert row is not None
    if row[0] is None or row[1] is None:
        return fence, row[0] is not None  # nothing, or fewer than max_events rows, below it
    first, nth = int(row[0]), int(row[1])
    if nth > first:
        return nth, True
    # One transaction wrote more than max_events rows: take all of it, never part of it.
    nxt = await _position(conn, query("projection.next_txid"), (str(first), str(fence)))
    return (nxt if nxt is not None else fence), True


async def _pending(conn: AsyncConn, position: int) -> bool:
    cur = await conn.execute(query("projection.pending"), (str(position),))
    row = await cur.fetchone()
    return bool(row and row[0])


@translating()
async def horizon(conn: AsyncConn) -> int:
    """A position every transaction committed before this call lies below."""
    position = await _position(conn, query("projection.horizon"))
    assert position is not None
    return position


@translating()
async def project_chunk(
    conn: AsyncConn,
    *,
    name: str = DEFAULT_NAME,
    max_events: int = 10_000,
    shard: Shard | None = None,
) -> ChunkResult | None:
    """Project the next chunk of committed events in one transaction.

    `conn` must be in autocommit mode (each call is its own transaction). Returns None when
    another projector of the same `name` (and `shard`) holds the lock, a result with
    ``advanced`` false when there is nothing to read below the fence.

    With a `shard`, reads the same chunks but projects only that shard's executions, under its
    own checkpoint row (all rows of the shard set are created together); shards of one name
    run side by side, an unsharded instance of it waits for them and they for it.
    """
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    async with conn.transaction():
        if shard is None:
            cur = await conn.execute(query("projection.try_lock"), (PROJECTOR_LOCK_CLASS, name))
        else:
            own = shard.checkpoint_name(name)
            cur = await conn.execute(
                query("projection.try_shard_lock"),
                (PROJECTOR_LOCK_CLASS, name, PROJECTOR_LOCK_CLASS, own),
            )
        row = await cur.fetchone()
        if row is None or not row[0]:
            return None
        fence, start = await _fence_and_checkpoint(conn, name, shard)
        if start >= fence:
            return ChunkResult(0, 0, 0, start, await _pending(conn, start), advanced=False)
        await conn.execute(query("projection.serial"))
        upper, rows = await _chunk_upper(conn, start, fence, max_events)
        cur = await conn.execute(
            query("projection.touched"),
            {
                "start": str(start),
                "upper": str(upper),
                "shards": shard.count if shard else None,
                "shard": shard.index if shard else None,
            },
        )
        touched = await cur.fetchall()
        events = sum(int(r[2]) for r in touched)
        step_keys = [(r[0], r[1]) for r in touched if r[1] is not None]
        ended = sorted({r[0] for r in touched if r[3]})
        cancelled = sorted({r[0] for r in touched if r[4]})
        execution_ids = sorted({r[0] for r in touched})
        steps = 0
        if step_keys or ended:
            cur = await conn.execute(
                query("projection.upsert_steps"),
                {
                    "execution_ids": [k[0] for k in step_keys],
                    "steps": [k[1] for k in step_keys],
                    "ended": ended,
                    "cancelled": cancelled,
                },
            )
            steps = cur.rowcount
        if execution_ids:
            await conn.execute(
                query("projection.upsert_executions"), {"execution_ids": execution_ids}
            )
        own_name = shard.checkpoint_name(name) if shard else name
        await conn.execute(query("projection.write_checkpoint"), (str(upper), own_name))
        pending = await _pending(conn, upper)
        return ChunkResult(events, steps, len(execution_ids), upper, pending, advanced=rows)


async def catch_up(
    conn: AsyncConn,
    *,
    name: str = DEFAULT_NAME,
    max_events: int = 10_000,
    until: int | None = None,
    lock_wait: float = 0.05,
    shard: Shard | None = None,
) -> int:
    """Project chunks until caught up; returns the number of events this call projected.

    With `until` None, stops at the first chunk that finds nothing below the fence. With a
    position (see :func:`horizon`), keeps going until the checkpoint reaches it, waiting for
    transactions below it that are still open to end. While another instance holds the lock this
    waits for it (it is doing the same work) and then checks for itself.
    """
    total = 0
    while True:
        result = await project_chunk(conn, name=name, max_events=max_events, shard=shard)
        if result is None:
            await asyncio.sleep(lock_wait)
            continue
        total += result.events
        if not result.advanced:
            if until is None or result.position >= until:
                return total
            await asyncio.sleep(lock_wait)


@translating()
async def checkpoint(conn: AsyncConn, name: str = DEFAULT_NAME) -> int | None:
    """The checkpoint position of projection `name` (None before its first run)."""
    cur = await conn.execute(query("projection.checkpoint"), (name,))
    row = await cur.fetchone()
    return int(row[0]) if row is not None else None


#: Workers of a rebuild: connections that fold a share of the executions each, side by side (one
#: per core of the server is the most that helps).
REBUILD_WORKERS: Final = 2
#: Bytes of COPY rows a rebuild worker gathers before handing them on.
_COPY_BLOCK: Final = 1 << 16
#: Seconds a rebuild worker waits for a lock. While its workers start, the rebuild holds its own
#: locks on the log and the state tables, so no other session holds a conflicting one: a worker
#: can only wait behind an exclusive request (ALTER TABLE, VACUUM FULL, a migration) that itself
#: waits for the rebuild. Without a limit the three would wait for each other for ever, and every
#: writer would queue behind the exclusive request.
REBUILD_WORKER_LOCK_WAIT: Final = 5.0


@translating()
async def rebuild(
    conn: AsyncConn, *, name: str = DEFAULT_NAME, workers: int = REBUILD_WORKERS
) -> RebuildResult:
    """Recompute both state tables from the whole log, set-based, in one transaction.

    Waits for a running projector's current transaction (same lock), then replaces the rows;
    readers keep seeing the old rows until the commit. The folding is split between `workers`
    extra connections, each taking a range of execution ids (bounded by quantiles of a sample
    of the log), reading the log in this transaction's snapshot (``pg_export_snapshot``) and
    streaming its rows back, which this transaction writes with ``COPY``: one atomic swap,
    however many workers.
    """
    if workers < 1:
        raise ValueError("workers must be at least 1")
    async with conn.transaction():
        await conn.execute(query("projection.lock"), (PROJECTOR_LOCK_CLASS, name))
        fence, _ = await _fence_and_checkpoint(conn, name)
        cur = await conn.execute(query("projection.export_snapshot"))
        row = await cur.fetchone()
        assert row is not None
        snapshot = str(row[0])
        bounds: list[str | None] = [None, None]  # one part: every execution
        if workers > 1:
            cur = await conn.execute(
                query("projection.part_bounds"), ([k / workers for k in range(1, workers)],)
            )
            row = await cur.fetchone()
            if row is not None and row[0]:  # null: no event at all
                bounds = [None, *row[0], None]
        await conn.execute(query("projection.copy_settings"))
        await conn.execute(query("projection.clear_steps"))
        await conn.execute(query("projection.clear_executions"))
        steps_q: _Blocks = asyncio.Queue(maxsize=64)
        executions_q: _Blocks = asyncio.Queue(maxsize=64)
        conninfo = make_conninfo(conn.info.dsn, password=conn.info.password)
        parts = [
            asyncio.create_task(_rebuild_part(conninfo, snapshot, low, high, steps_q, executions_q))
            for low, high in itertools.pairwise(bounds)
        ]
        try:
            steps = await _copy_in(conn, query("projection.copy_steps"), steps_q, len(parts))
            executions = await _copy_in(
                conn, query("projection.copy_executions"), executions_q, len(parts)
            )
            await asyncio.gather(*parts)
        finally:
            for task in parts:
                task.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
        await conn.execute(query("projection.write_checkpoint"), (str(fence), name))
        return RebuildResult(steps, executions, fence)


#: Blocks of COPY text rows from the rebuild's workers; None: a worker's last, an exception: a
#: worker failed (raised here, so the rebuild's COPY ends with that error, never half-cancelled).
_Blocks = asyncio.Queue[bytes | BaseException | None]


async def _copy_in(conn: AsyncConn, statement: LiteralString, rows: _Blocks, parts: int) -> int:
    """Write the blocks of COPY text rows the `parts` workers put in `rows` (each ends with
    None); returns the number of rows."""
    count = 0
    async with conn.cursor().copy(statement) as copy:
        while parts:
            block = await rows.get()
            if block is None:
                parts -= 1
            elif isinstance(block, BaseException):
                raise block
            else:
                count += block.count(b"\n")
                await copy.write(block)
    return count


@contextlib.asynccontextmanager
async def _queued_behind_exclusive() -> AsyncIterator[None]:
    """A worker's lock wait that ran out (:data:`REBUILD_WORKER_LOCK_WAIT`) as what it means."""
    try:
        yield
    except psycopg.errors.LockNotAvailable as exc:
        raise ProjectorError(
            "the rebuild was rolled back, nothing changed: one of its workers waited "
            f"{REBUILD_WORKER_LOCK_WAIT:g} s for a lock on noetl's tables behind another "
            "session's request for an exclusive lock (ALTER TABLE, VACUUM FULL, a migration), "
            "which was waiting for the rebuild; run the rebuild again once that is done"
        ) from exc


async def _rebuild_part(
    conninfo: str,
    snapshot: str,
    low: str | None,
    high: str | None,
    steps: _Blocks,
    executions: _Blocks,
) -> None:
    """A rebuild worker: fold the executions from `low` up to before `high` (None: no bound) in
    the rebuild's snapshot and stream their step rows, then their execution rows (COPY text),
    into the queues; an error, into both (the rebuild reads one of them)."""
    try:
        worker = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, **session_kwargs(lock_timeout=REBUILD_WORKER_LOCK_WAIT)
        )
        try:
            await worker.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
            async with _queued_behind_exclusive(), worker.transaction():
                await psycopg.AsyncClientCursor(worker).execute(
                    query("projection.import_snapshot"), (snapshot,)
                )
                await worker.execute(query("projection.copy_settings"))
                await worker.execute(query("projection.part_table"))
                params = {"low": low, "high": high}
                for statement, out in (
                    (query("projection.part_steps"), steps),
                    (query("projection.part_executions"), executions),
                ):
                    async with worker.cursor().copy(statement, params) as copy:
                        block = bytearray()
                        async for data in copy:
                            block += data
                            if len(block) >= _COPY_BLOCK:
                                await out.put(bytes(block))
                                block.clear()
                        if block:
                            await out.put(bytes(block))
                    await out.put(None)
        finally:
            await worker.close()
    except Exception as exc:
        await steps.put(exc)
        await executions.put(exc)
        raise


@translating()
async def connect(url: str) -> AsyncConn:
    """An autocommit connection in UTC, as the projector uses: no statement or lock timeout,
    whatever the database's defaults (:data:`projector.timeouts.PROJECTION_KWARGS`)."""
    return await psycopg.AsyncConnection.connect(url, autocommit=True, **PROJECTION_KWARGS)


class Projector:
    """A long-running projector: catches up, then waits for NOTIFY (or polls) and repeats."""

    def __init__(
        self,
        url: str,
        *,
        name: str = DEFAULT_NAME,
        max_events: int = 10_000,
        poll_interval: float = 1.0,
        on_chunk: ChunkObserver | None = None,
        shard: Shard | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError("poll_interval must be more than 0 seconds")
        self.url = url
        self.name = name
        self.shard = shard
        self.max_events = max_events
        self.poll_interval = poll_interval
        self.on_chunk = on_chunk

    async def once(self) -> int:
        """Project everything committed before the call; return the number of events projected.

        Waits for writers' transactions that were open when it started to end.
        """
        conn = await connect(self.url)
        try:
            target = await horizon(conn)
            return await catch_up(
                conn, name=self.name, max_events=self.max_events, until=target, shard=self.shard
            )
        finally:
            await conn.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set; the transaction in progress always finishes first.

        Wakes on a NOTIFY on :data:`~projector.channels.NOTIFY_CHANNEL`, or after
        `poll_interval` seconds without one. Transient database errors are retried with a
        :class:`~projector.backoff.Backoff` from `poll_interval` (at most :data:`RETRY_CAP`)
        doubling up to :data:`RETRY_CAP` seconds, waking early when `stop` is set; it starts
        from the beginning again once the projector has connected.
        """
        backoff = Backoff(min(self.poll_interval, RETRY_CAP), cap=RETRY_CAP)
        while not stop.is_set():
            try:
                await self._serve(stop, backoff)
                return
            except ProjectorError as exc:
                if not is_transient(exc):
                    raise
                log.warning("projector: %s; retrying in %.1f s", exc, backoff.current)
                await backoff.wait(stop)

    @translating()
    async def _serve(self, stop: asyncio.Event, backoff: Backoff) -> None:
        work = await connect(self.url)
        try:
            listen = await connect(self.url)
        except BaseException:
            await work.close()
            raise
        try:
            await listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            backoff.reset()
            while not stop.is_set():
                wait = self.poll_interval
                while not stop.is_set():
                    began = time.perf_counter()
                    result = await project_chunk(
                        work, name=self.name, max_events=self.max_events, shard=self.shard
                    )
                    if result is not None and self.on_chunk is not None:
                        self.on_chunk(result, time.perf_counter() - began)
                    if result is None or not result.advanced:
                        if result is None or result.pending:
                            # Another instance is working, or committed rows wait behind an
                            # open transaction: look again soon rather than at the next poll.
                            wait = min(self.poll_interval, STALL_WAIT)
                        break
                if stop.is_set():
                    break
                async for _ in listen.notifies(timeout=wait, stop_after=1):
                    pass
        finally:
            await work.close()
            await listen.close()
