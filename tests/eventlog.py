"""Test helpers: write envelopes into noetl.event with plain SQL, read the status views and tables.

Stands in for the durable sink in tests; each event is stored under its resolved event id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from projector.envelope import ExecutorEvent
from projector.fold import ExecutionState, StepState

INSERT = (
    "INSERT INTO noetl.event (execution_id, event_id, event_type, step, status, created_at, "
    "context, worker_id, meta) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
)


def rows(events: Iterable[ExecutorEvent]) -> list[tuple[Any, ...]]:
    """Parameter rows for INSERT, one per event (no deduplication)."""
    return [
        (
            ev.execution_id,
            ev.resolved_event_id(),
            ev.event_type,
            ev.step,
            ev.status,
            ev.created_at,
            Jsonb(ev.context),
            ev.worker_id,
            Jsonb(ev.meta) if ev.meta is not None else None,
        )
        for ev in events
    ]


async def insert_events(
    conn: psycopg.AsyncConnection[Any], events: Iterable[ExecutorEvent]
) -> None:
    """Insert `events` in the connection's current transaction (or autocommit)."""
    params = rows(events)
    if params:
        async with conn.cursor() as cur:
            await cur.executemany(INSERT, params)


STEP_COLUMNS = ", ".join(StepState.__dataclass_fields__)
EXECUTION_COLUMNS = ", ".join(ExecutionState.__dataclass_fields__)


async def read_steps(
    conn: psycopg.AsyncConnection[Any], relation: str, execution_ids: Sequence[str] | None = None
) -> dict[tuple[str, str], StepState]:
    """`noetl.step_status` or `noetl.step_state` as StepState objects (relation is trusted)."""
    where = " WHERE execution_id = ANY(%s)" if execution_ids is not None else ""
    params = (list(execution_ids),) if execution_ids is not None else ()
    cur = await conn.execute(f"SELECT {STEP_COLUMNS} FROM {relation}{where}", params)
    out = {}
    for row in await cur.fetchall():
        st = StepState(*row)
        out[(st.execution_id, st.step)] = st
    return out


async def read_executions(
    conn: psycopg.AsyncConnection[Any], relation: str, execution_ids: Sequence[str] | None = None
) -> dict[str, ExecutionState]:
    """`noetl.execution_status` or `noetl.execution_state` as ExecutionState objects."""
    where = " WHERE execution_id = ANY(%s)" if execution_ids is not None else ""
    params = (list(execution_ids),) if execution_ids is not None else ()
    cur = await conn.execute(f"SELECT {EXECUTION_COLUMNS} FROM {relation}{where}", params)
    return {row[0]: ExecutionState(*row) for row in await cur.fetchall()}
