"""Monthly partitions of `noetl.event`: creating them ahead, and retention by whole months.

Creating: :func:`ensure_partitions` calls the schema's ``noetl.ensure_event_partitions`` (the
``admin.ensure_partitions`` query); ``projector project`` runs :func:`upkeep` (at start, then
hourly), ``projector db partitions`` once.

Retention drops whole monthly partitions, never ``DELETE`` s rows. :func:`plan_retention` lists
the months that end at or before the cut (bounds read from the catalog), with their rows, size,
executions, and the rows the projector has not projected yet (``txid`` at or above its
checkpoint; every row when it has never run). :func:`drop_months` detaches those months in one
transaction, checks again that the projector has read every row in them (nothing can be added to
a detached partition), and drops them; a month with unprojected rows makes it drop nothing.
`noetl.step_state` and `noetl.execution_state` are not touched: their rows stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from .database import CONNECT_KWARGS
from .errors import ProjectorError, translating
from .projection import DEFAULT_NAME, checkpoint
from .queries import query

__all__ = [
    "UPKEEP_INTERVAL",
    "Month",
    "RetentionPlan",
    "drop_months",
    "ensure_partitions",
    "plan_retention",
    "upkeep",
]

log = logging.getLogger(__name__)

#: Seconds between two runs of the partition upkeep in `projector project`.
UPKEEP_INTERVAL = 3600.0
#: How long retention waits for its lock on noetl.event before giving up.
LOCK_TIMEOUT = "10s"

Conn = psycopg.AsyncConnection[Any]


@translating()
async def ensure_partitions(conn: Conn, ahead: int) -> int:
    """Create the partitions for this month (UTC) and the `ahead` months after it; return how
    many were created (existing ones are left alone)."""
    if ahead < 0:
        raise ValueError("ahead must be 0 or more months")
    cur = await conn.execute(query("admin.ensure_partitions"), (ahead + 1,))
    row = await cur.fetchone()
    return int(row[0]) if row is not None and row[0] is not None else 0


async def upkeep(
    url: str,
    ahead: int,
    stop: asyncio.Event,
    *,
    interval: float = UPKEEP_INTERVAL,
    first_after: float = 0.0,
) -> None:
    """Run :func:`ensure_partitions` after `first_after` seconds, then every `interval` seconds,
    until `stop` is set.

    A failure is logged as a warning and tried again at the next interval (the projector goes on).
    """
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), first_after)
    while not stop.is_set():
        try:
            with translating():
                async with await psycopg.AsyncConnection.connect(
                    url, autocommit=True, **CONNECT_KWARGS
                ) as conn:
                    created = await ensure_partitions(conn, ahead)
            if created:
                log.info("created %d monthly partition(s) of noetl.event", created)
        except ProjectorError as exc:
            log.warning("partition upkeep failed (trying again in %.0f s): %s", interval, exc)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)


@dataclass(frozen=True)
class Month:
    """One monthly partition that ends before the retention cut."""

    schema: str
    table: str
    lower: datetime
    upper: datetime
    #: Size on disk, indexes included.
    bytes: int
    rows: int
    #: Rows the projector has not projected yet (every row when it has never run).
    unprojected: int
    executions: int

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


@dataclass(frozen=True)
class RetentionPlan:
    """What retention at `cut` would drop."""

    cut: datetime
    #: The projector's checkpoint (None: it has never run).
    checkpoint: int | None
    months: tuple[Month, ...]
    #: Events older than the cut in the default partition: kept (retention never deletes rows).
    default_rows: int

    @property
    def refused(self) -> tuple[Month, ...]:
        """The months that hold rows the projector has not projected yet."""
        return tuple(m for m in self.months if m.unprojected)


@translating()
async def plan_retention(
    conn: Conn, older_than: timedelta, *, name: str = DEFAULT_NAME, now: datetime | None = None
) -> RetentionPlan:
    """The months that end at or before ``now - older_than`` and what is in them (read only)."""
    cut = (now or datetime.now(UTC)) - older_than
    position = await checkpoint(conn, name)
    cur = await conn.execute(query("admin.months_before"), {"cut": cut})
    bounds = await cur.fetchall()
    cur = await conn.execute(
        query("admin.rows_before"),
        {"cut": cut, "checkpoint": None if position is None else str(position)},
    )
    found = await cur.fetchall()
    counts = {(r[0], r[1]): (int(r[3]), int(r[4]), int(r[5])) for r in found}
    months = []
    for schema, table, lower, upper, size in bounds:
        rows, unprojected, executions = counts.pop((schema, table), (0, 0, 0))
        months.append(Month(schema, table, lower, upper, int(size), rows, unprojected, executions))
    # Older rows elsewhere sit in the month the cut falls in (kept until it ends) or in the
    # default partition (kept: retention never deletes rows), which is worth a word.
    default_rows = sum(int(r[3]) for r in found if r[2])
    return RetentionPlan(cut, position, tuple(months), default_rows)


@translating()
async def drop_months(conn: Conn, plan: RetentionPlan, *, name: str = DEFAULT_NAME) -> list[Month]:
    """Drop the months of `plan` in one transaction; return them, or [] when any is refused.

    `conn` must be in autocommit mode. The months are detached first (which locks noetl.event
    for the rest of this short transaction, waiting at most :data:`LOCK_TIMEOUT`), then checked
    again against the checkpoint, then dropped. A month that holds rows the projector has not
    projected yet (checked again here, since rows may have arrived since the plan) rolls it all
    back.
    """
    if not plan.months or plan.refused:
        return []
    try:
        async with conn.transaction():
            await conn.execute(query("admin.lock_timeout"), (LOCK_TIMEOUT,))
            parent = sql.Identifier("noetl", "event")
            for month in plan.months:
                table = sql.Identifier(month.schema, month.table)
                await conn.execute(
                    sql.SQL("ALTER TABLE {} DETACH PARTITION {}").format(parent, table)
                )
            position = await checkpoint(conn, name)
            for month in plan.months:
                table = sql.Identifier(month.schema, month.table)
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {} WHERE %(p)s::xid8 IS NULL OR txid >= %(p)s::xid8"
                    ).format(table),
                    {"p": None if position is None else str(position)},
                )
                row = await cur.fetchone()
                if row is not None and row[0]:
                    raise _Refused
            for month in plan.months:
                await conn.execute(
                    sql.SQL("DROP TABLE {}").format(sql.Identifier(month.schema, month.table))
                )
    except _Refused:
        return []
    except pgerrors.LockNotAvailable as exc:
        raise ProjectorError(
            f"could not lock noetl.event within {LOCK_TIMEOUT} (a long transaction holds it); "
            "nothing was dropped: try again"
        ) from exc
    return list(plan.months)


class _Refused(Exception):
    """A month got rows the projector has not projected between the plan and the drop."""
