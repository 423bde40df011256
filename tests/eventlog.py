"""Test helpers: write envelopes into noetl.event with plain SQL, read the status views and tables.

Stands in for the durable sink in tests; each event is stored under its resolved event id.
:func:`every_surface` reads the status of some executions from every SQL copy of the rules.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from projector.envelope import ExecutorEvent
from projector.fold import ExecutionState, StepState
from projector.projection import Projector, rebuild

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


#: The real noetl traces and what is true in each (their README).
TRACES = Path("/work/shared/traces")
#: The API export's rows carry no execution id; its README names it.
EXPORT_EXECUTION_ID = 543942402780693277


def trace_events(name: str) -> list[ExecutorEvent]:
    """The events of a trace file as a sink would store them.

    NDJSON, or the API export's wrapped document (`{"result": [...]}`, rows given the execution id
    its README names). Rows without `event_id` (the pft export) get the content-derived id plus the
    number of identical rows before them, so that identical rows (a fan-out in one microsecond)
    stay distinct events and loading the file again gives the same ids.
    """
    text = (TRACES / name).read_text(encoding="utf-8")
    if name.endswith(".json"):
        docs = [{**row, "execution_id": EXPORT_EXECUTION_ID} for row in json.loads(text)["result"]]
    else:
        docs = [json.loads(line) for line in text.splitlines() if line.strip()]
    seen: Counter[str] = Counter()
    out = []
    for doc in docs:
        ev = ExecutorEvent.model_validate(doc)
        if ev.event_id is None:
            derived = ev.resolved_event_id()
            seen[derived] += 1
            ev = ev.model_copy(update={"event_id": f"{derived}:{seen[derived]}"})
        out.append(ev)
    return out


async def insert_new_events(
    conn: psycopg.AsyncConnection[Any], events: Iterable[ExecutorEvent]
) -> int:
    """Insert `events`, skipping rows already stored; return how many were stored."""
    stored = 0
    async with conn.cursor() as cur:
        for params in rows(events):
            await cur.execute(INSERT + " ON CONFLICT DO NOTHING", params)
            stored += cur.rowcount
    return stored


#: Steps by (execution id, step) and executions by id, as one surface reports them.
Answer = tuple[dict[tuple[str, str], StepState], dict[str, ExecutionState]]
SURFACES = ("views", "tables", "status_of", "rebuild")
# The per-key functions, one call per key in one statement.
STEPS_OF = (
    f"SELECT v.{STEP_COLUMNS.replace(', ', ', v.')} "
    "FROM unnest(%s::text[], %s::text[]) AS k(execution_id, step) "
    "CROSS JOIN LATERAL noetl.step_status_of(k.execution_id, k.step) v"
)
EXECUTIONS_OF = (
    f"SELECT v.{EXECUTION_COLUMNS.replace(', ', ', v.')} "
    "FROM unnest(%s::text[]) AS k(execution_id) "
    "CROSS JOIN LATERAL noetl.execution_status_of(k.execution_id) v"
)


async def steps_of(
    conn: psycopg.AsyncConnection[Any], keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], StepState]:
    """`noetl.step_status_of` for each key (keys that are no step return no row)."""
    keys = list(keys)
    cur = await conn.execute(STEPS_OF, ([k[0] for k in keys], [k[1] for k in keys]))
    return {(st.execution_id, st.step): st for st in (StepState(*r) for r in await cur.fetchall())}


async def executions_of(
    conn: psycopg.AsyncConnection[Any], execution_ids: Iterable[str]
) -> dict[str, ExecutionState]:
    """`noetl.execution_status_of` for each id (unknown ids return no row)."""
    cur = await conn.execute(EXECUTIONS_OF, (list(execution_ids),))
    return {r[0]: ExecutionState(*r) for r in await cur.fetchall()}


async def every_surface(
    conn: psycopg.AsyncConnection[Any],
    url: str,
    events: Sequence[ExecutorEvent],
    *,
    max_events: int = 10_000,
) -> dict[str, Answer]:
    """The status of the executions of `events` (already stored) from each of :data:`SURFACES`:
    the views, the tables after `projector project --once`, `noetl.step_status_of` /
    `noetl.execution_status_of` (asked for every step name the events hold, also the raw
    `:task_sequence` ones and those of lifecycle and bookkeeping events, and an unknown
    execution), and the tables after their rows are deleted and `rebuild` ran."""
    ids = sorted({ev.execution_id for ev in events})
    await Projector(url, max_events=max_events).once()
    views = (
        await read_steps(conn, "noetl.step_status", ids),
        await read_executions(conn, "noetl.execution_status", ids),
    )
    tables = (
        await read_steps(conn, "noetl.step_state", ids),
        await read_executions(conn, "noetl.execution_state", ids),
    )
    keys = {(ev.execution_id, ev.step) for ev in events} | set(views[0])
    unknown = ids[0] + "-none"
    status_of = (
        await steps_of(conn, sorted(keys | {(unknown, "a")})),
        await executions_of(conn, [*ids, unknown]),
    )
    for table in ("step_state", "execution_state"):
        await conn.execute(f"DELETE FROM noetl.{table} WHERE execution_id = ANY(%s)", (ids,))
    await rebuild(conn)
    rebuilt = (
        await read_steps(conn, "noetl.step_state", ids),
        await read_executions(conn, "noetl.execution_state", ids),
    )
    return dict(zip(SURFACES, (views, tables, status_of, rebuilt), strict=True))
