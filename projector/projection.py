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
touch with the same SQL as the views, upserts them and moves the checkpoint, then commits. A crash
anywhere rolls all of it back; the next run replays the same chunk.

Rebuild
-------
:func:`rebuild` recomputes both tables from the whole log with set-based SQL in one transaction
under the same lock. Readers of the views and tables are never blocked (MVCC); they see the old
rows until it commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import sql

from .channels import NOTIFY_CHANNEL
from .database import CONNECT_KWARGS
from .errors import ProjectorError, is_transient, translate

__all__ = [
    "DEFAULT_NAME",
    "LOCK_CLASS",
    "ChunkResult",
    "Projector",
    "RebuildResult",
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
#: First key of the advisory lock `(LOCK_CLASS, hashtext(name))` that serialises projectors.
LOCK_CLASS: Final = 0x6E6F6574  # "noet"
#: Seconds between looks while rows wait for the fence or for another instance.
STALL_WAIT: Final = 0.05

AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]

STEP_COLUMNS = (
    "execution_id",
    "step",
    "status",
    "attempts",
    "started_at",
    "finished_at",
    "last_event_at",
    "last_event_type",
    "event_count",
    "error",
)
EXECUTION_COLUMNS = (
    "execution_id",
    "status",
    "started_at",
    "finished_at",
    "last_event_at",
    "event_count",
    "step_count",
    "steps_completed",
    "steps_failed",
    "steps_running",
)


def _cols(names: tuple[str, ...], prefix: str | None = None) -> sql.Composable:
    if prefix is None:
        return sql.SQL(", ").join(sql.Identifier(n) for n in names)
    return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)


def _upsert(table: str, names: tuple[str, ...], keys: tuple[str, ...]) -> sql.Composable:
    return sql.SQL("ON CONFLICT ({keys}) DO UPDATE SET {sets}").format(
        keys=_cols(keys),
        sets=sql.SQL(", ").join(
            sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(n))
            for n in names
            if n not in keys
        ),
    )


# The steps touched by a chunk, recomputed through the view (the key is pushed into the grouped
# subquery, so each is an index scan of that step's events).
UPSERT_STEPS = sql.SQL(
    """
INSERT INTO noetl.step_state ({cols})
SELECT {vcols}
FROM unnest(%(execution_ids)s::text[], %(steps)s::text[]) AS k(execution_id, step)
CROSS JOIN LATERAL (
    SELECT * FROM noetl.step_status s WHERE s.execution_id = k.execution_id AND s.step = k.step
) v
{upsert}
"""
).format(
    cols=_cols(STEP_COLUMNS),
    vcols=_cols(STEP_COLUMNS, "v"),
    upsert=_upsert("step_state", STEP_COLUMNS, ("execution_id", "step")),
)

# The executions touched by a chunk: the execution_status view's rules, with the step counts taken
# from step_state (already up to date in this transaction) instead of recomputing every step.
UPSERT_EXECUTIONS = sql.SQL(
    """
INSERT INTO noetl.execution_state ({cols})
SELECT k.execution_id, coalesce(x.status, 'RUNNING'), a.started_at, x.finished_at,
       a.last_event_at, a.event_count, s.step_count, s.steps_completed, s.steps_failed,
       s.steps_running
FROM unnest(%(execution_ids)s::text[]) AS k(execution_id)
CROSS JOIN LATERAL (
    SELECT min(e.created_at) AS started_at, max(e.created_at) AS last_event_at,
           count(*) AS event_count
    FROM noetl.event e WHERE e.execution_id = k.execution_id
) a
LEFT JOIN LATERAL (
    SELECT noetl.normalize_status(e.status, e.event_type) AS status, e.created_at AS finished_at
    FROM noetl.event e
    WHERE e.execution_id = k.execution_id
      AND noetl.is_execution_event(e.event_type)
      AND noetl.is_terminal(noetl.normalize_status(e.status, e.event_type))
    ORDER BY e.created_at DESC, e.event_id COLLATE "C" DESC
    LIMIT 1
) x ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS step_count,
           count(*) FILTER (WHERE ss.status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE ss.status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(ss.status)) AS steps_running
    FROM noetl.step_state ss WHERE ss.execution_id = k.execution_id
) s
{upsert}
"""
).format(
    cols=_cols(EXECUTION_COLUMNS),
    upsert=_upsert("execution_state", EXECUTION_COLUMNS, ("execution_id",)),
)

REBUILD_STEPS = sql.SQL(
    "INSERT INTO noetl.step_state ({cols}) SELECT {cols} FROM noetl.step_status"
).format(cols=_cols(STEP_COLUMNS))

# Set-based twin of UPSERT_EXECUTIONS over the whole log (the execution_status view's query with
# step counts from the freshly rebuilt step_state).
REBUILD_EXECUTIONS = sql.SQL(
    """
INSERT INTO noetl.execution_state ({cols})
SELECT a.execution_id, coalesce(x.status, 'RUNNING'), a.started_at, x.finished_at,
       a.last_event_at, a.event_count, coalesce(s.step_count, 0), coalesce(s.steps_completed, 0),
       coalesce(s.steps_failed, 0), coalesce(s.steps_running, 0)
FROM (
    SELECT execution_id, min(created_at) AS started_at, max(created_at) AS last_event_at,
           count(*) AS event_count
    FROM noetl.event GROUP BY execution_id
) a
LEFT JOIN (
    SELECT DISTINCT ON (execution_id) execution_id,
           noetl.normalize_status(status, event_type) AS status, created_at AS finished_at
    FROM noetl.event
    WHERE noetl.is_execution_event(event_type)
      AND noetl.is_terminal(noetl.normalize_status(status, event_type))
    ORDER BY execution_id, created_at DESC, event_id COLLATE "C" DESC
) x ON x.execution_id = a.execution_id
LEFT JOIN (
    SELECT execution_id, count(*) AS step_count,
           count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running
    FROM noetl.step_state GROUP BY execution_id
) s ON s.execution_id = a.execution_id
"""
).format(cols=_cols(EXECUTION_COLUMNS))

TRY_LOCK = "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))"
LOCK = "SELECT pg_advisory_xact_lock(%s, hashtext(%s))"
FENCE = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text"
ENSURE_CHECKPOINT = (
    "INSERT INTO noetl.projector_checkpoint (name, position) VALUES (%s, '0') "
    "ON CONFLICT (name) DO NOTHING"
)
READ_CHECKPOINT = "SELECT position::text FROM noetl.projector_checkpoint WHERE name = %s FOR UPDATE"
WRITE_CHECKPOINT = (
    "UPDATE noetl.projector_checkpoint SET position = %s::xid8, updated_at = now() WHERE name = %s"
)
# The first unread txid below the fence, and the txid at offset `max_events` of the unread rows.
CHUNK_BOUNDS = """
SELECT (SELECT min(txid) FROM noetl.event
        WHERE txid >= %(start)s::xid8 AND txid < %(fence)s::xid8)::text,
       (SELECT txid FROM noetl.event WHERE txid >= %(start)s::xid8 AND txid < %(fence)s::xid8
        ORDER BY txid OFFSET %(n)s LIMIT 1)::text
"""
NEXT_TXID = "SELECT min(txid)::text FROM noetl.event WHERE txid > %s::xid8 AND txid < %s::xid8"
# Rows at or above the new checkpoint: committed ones wait for the fence to pass them.
PENDING = "SELECT EXISTS (SELECT 1 FROM noetl.event WHERE txid >= %s::xid8)"
HORIZON = "SELECT pg_snapshot_xmax(pg_current_snapshot())::text"
TOUCHED = """
SELECT execution_id,
       CASE WHEN step <> '' AND NOT noetl.is_execution_event(event_type) THEN step END AS step,
       count(*)
FROM noetl.event
WHERE txid >= %s::xid8 AND txid < %s::xid8
GROUP BY 1, 2
"""


@dataclass(frozen=True)
class ChunkResult:
    """What one projector transaction did."""

    events: int
    steps: int
    executions: int
    position: int
    #: Rows exist at or above `position` (not yet committed, or waiting for the fence).
    pending: bool


@dataclass(frozen=True)
class RebuildResult:
    """What a rebuild wrote."""

    steps: int
    executions: int
    position: int


async def _fence_and_checkpoint(conn: AsyncConn, name: str) -> tuple[int, int]:
    # The fence first: after the checkpoint INSERT this transaction has an id of its own.
    cur = await conn.execute(FENCE)
    row = await cur.fetchone()
    assert row is not None
    fence = int(row[0])
    await conn.execute(ENSURE_CHECKPOINT, (name,))
    cur = await conn.execute(READ_CHECKPOINT, (name,))
    row = await cur.fetchone()
    assert row is not None
    return fence, int(row[0])


async def _chunk_upper(conn: AsyncConn, start: int, fence: int, max_events: int) -> int:
    cur = await conn.execute(
        CHUNK_BOUNDS, {"start": str(start), "fence": str(fence), "n": max_events}
    )
    row = await cur.fetchone()
    assert row is not None
    if row[0] is None or row[1] is None:
        return fence  # nothing, or fewer than max_events rows, below the fence
    first, nth = int(row[0]), int(row[1])
    if nth > first:
        return nth
    # One transaction wrote more than max_events rows: take all of it, never part of it.
    cur = await conn.execute(NEXT_TXID, (str(first), str(fence)))
    nxt = await cur.fetchone()
    return int(nxt[0]) if nxt is not None and nxt[0] is not None else fence


async def _pending(conn: AsyncConn, position: int) -> bool:
    cur = await conn.execute(PENDING, (str(position),))
    row = await cur.fetchone()
    return bool(row and row[0])


async def horizon(conn: AsyncConn) -> int:
    """A position every transaction committed before this call lies below."""
    try:
        cur = await conn.execute(HORIZON)
        row = await cur.fetchone()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    assert row is not None
    return int(row[0])


async def project_chunk(
    conn: AsyncConn, *, name: str = DEFAULT_NAME, max_events: int = 10_000
) -> ChunkResult | None:
    """Project the next chunk of committed events in one transaction.

    `conn` must be in autocommit mode (each call is its own transaction). Returns None when
    another projector of the same `name` holds the lock, a result with ``events == 0`` when there
    is nothing to read below the fence.
    """
    if max_events < 1:
        raise ValueError("max_events must be at least 1")
    try:
        async with conn.transaction():
            cur = await conn.execute(TRY_LOCK, (LOCK_CLASS, name))
            row = await cur.fetchone()
            if row is None or not row[0]:
                return None
            fence, start = await _fence_and_checkpoint(conn, name)
            if start >= fence:
                return ChunkResult(0, 0, 0, start, await _pending(conn, start))
            upper = await _chunk_upper(conn, start, fence, max_events)
            cur = await conn.execute(TOUCHED, (str(start), str(upper)))
            touched = await cur.fetchall()
            events = sum(int(r[2]) for r in touched)
            step_keys = [(r[0], r[1]) for r in touched if r[1] is not None]
            execution_ids = sorted({r[0] for r in touched})
            if step_keys:
                await conn.execute(
                    UPSERT_STEPS,
                    {
                        "execution_ids": [k[0] for k in step_keys],
                        "steps": [k[1] for k in step_keys],
                    },
                )
            if execution_ids:
                await conn.execute(UPSERT_EXECUTIONS, {"execution_ids": execution_ids})
            await conn.execute(WRITE_CHECKPOINT, (str(upper), name))
            pending = await _pending(conn, upper)
            return ChunkResult(events, len(step_keys), len(execution_ids), upper, pending)
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def catch_up(
    conn: AsyncConn,
    *,
    name: str = DEFAULT_NAME,
    max_events: int = 10_000,
    until: int | None = None,
    lock_wait: float = 0.05,
) -> int:
    """Project chunks until caught up; returns the number of events this call projected.

    With `until` None, stops at the first chunk that finds nothing below the fence. With a
    position (see :func:`horizon`), keeps going until the checkpoint reaches it, waiting for
    transactions below it that are still open to end. While another instance holds the lock this
    waits for it (it is doing the same work) and then checks for itself.
    """
    total = 0
    while True:
        result = await project_chunk(conn, name=name, max_events=max_events)
        if result is None:
            await asyncio.sleep(lock_wait)
            continue
        total += result.events
        if result.events == 0:
            if until is None or result.position >= until:
                return total
            await asyncio.sleep(lock_wait)


async def checkpoint(conn: AsyncConn, name: str = DEFAULT_NAME) -> int | None:
    """The checkpoint position of projection `name` (None before its first run)."""
    try:
        cur = await conn.execute(
            "SELECT position::text FROM noetl.projector_checkpoint WHERE name = %s", (name,)
        )
        row = await cur.fetchone()
    except psycopg.Error as exc:
        raise translate(exc) from exc
    return int(row[0]) if row is not None else None


async def rebuild(conn: AsyncConn, *, name: str = DEFAULT_NAME) -> RebuildResult:
    """Recompute both state tables from the whole log, set-based, in one transaction.

    Waits for a running projector's current transaction (same lock), then replaces the rows;
    readers keep seeing the old rows until the commit.
    """
    try:
        async with conn.transaction():
            await conn.execute(LOCK, (LOCK_CLASS, name))
            fence, _ = await _fence_and_checkpoint(conn, name)
            await conn.execute("DELETE FROM noetl.step_state")
            await conn.execute("DELETE FROM noetl.execution_state")
            cur = await conn.execute(REBUILD_STEPS)
            steps = cur.rowcount
            cur = await conn.execute(REBUILD_EXECUTIONS)
            executions = cur.rowcount
            await conn.execute(WRITE_CHECKPOINT, (str(fence), name))
            return RebuildResult(steps, executions, fence)
    except psycopg.Error as exc:
        raise translate(exc) from exc


async def connect(url: str) -> AsyncConn:
    """An autocommit connection in UTC, as the projector uses."""
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True, **CONNECT_KWARGS)
    except psycopg.Error as exc:
        raise translate(exc) from exc


class Projector:
    """A long-running projector: catches up, then waits for NOTIFY (or polls) and repeats."""

    def __init__(
        self,
        url: str,
        *,
        name: str = DEFAULT_NAME,
        max_events: int = 10_000,
        poll_interval: float = 1.0,
    ) -> None:
        self.url = url
        self.name = name
        self.max_events = max_events
        self.poll_interval = poll_interval

    async def once(self) -> int:
        """Project everything committed before the call; return the number of events projected.

        Waits for writers' transactions that were open when it started to end.
        """
        conn = await connect(self.url)
        try:
            target = await horizon(conn)
            return await catch_up(conn, name=self.name, max_events=self.max_events, until=target)
        finally:
            await conn.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Project until `stop` is set; the transaction in progress always finishes first.

        Wakes on a NOTIFY on :data:`~projector.channels.NOTIFY_CHANNEL`, or after
        `poll_interval` seconds without one. Transient database errors are retried with backoff.
        """
        backoff = self.poll_interval
        while not stop.is_set():
            try:
                await self._serve(stop)
                return
            except ProjectorError as exc:
                if not is_transient(exc):
                    raise
                log.warning("projector: %s; retrying in %.1f s", exc, backoff)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), backoff)
                backoff = min(backoff * 2, 30.0)

    async def _serve(self, stop: asyncio.Event) -> None:
        work = await connect(self.url)
        listen = await connect(self.url)
        try:
            await listen.execute(sql.SQL("LISTEN {}").format(sql.Identifier(NOTIFY_CHANNEL)))
            while not stop.is_set():
                wait = self.poll_interval
                while not stop.is_set():
                    result = await project_chunk(work, name=self.name, max_events=self.max_events)
                    if result is None or result.events == 0:
                        if result is None or result.pending:
                            # Another instance is working, or committed rows wait behind an
                            # open transaction: look again soon rather than at the next poll.
                            wait = min(self.poll_interval, STALL_WAIT)
                        break
                if stop.is_set():
                    break
                try:
                    async for _ in listen.notifies(timeout=wait, stop_after=1):
                        pass
                except psycopg.Error as exc:
                    raise translate(exc) from exc
        finally:
            await work.close()
            await listen.close()
