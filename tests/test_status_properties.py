"""Property: on shuffled random traces with duplicates, the Python fold equals every SQL copy of
the status rules: the views, the per-key functions `noetl.step_status_of` /
`noetl.execution_status_of`, the incrementally projected tables and the rebuilt ones (the four
copies of the execution status rule are listed at the top of projector/sql/projection.sql)."""

from __future__ import annotations

import asyncio
import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.envelope import ExecutorEvent
from projector.fold import ExecutionState, StepState, fold_all
from projector.projection import Projector, rebuild
from tests.eventlog import (
    EXECUTION_COLUMNS,
    STEP_COLUMNS,
    insert_events,
    read_executions,
    read_steps,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, 0, tzinfo=UTC)
EVENT_TYPES = [
    "playbook.initialized",
    "playbook.completed",
    "playbook.failed",
    "workflow.initialized",
    "workflow.completed",
    "execution.cancelled",
    "command.issued",
    "command.claimed",
    "command.started",
    "command.heartbeat",
    "command.completed",
    "command.failed",
    "command.cancelled",
    "step.enter",
    "step.exit",
    "step.retry",
    "call.done",
    "call.error",
    "loop.item",
    "batch.processing",
    "batch.failed",
    "stage.scheduled",
    "frame.restarted",
]
STATUSES = [
    None,
    "",
    " ",
    "RUNNING",
    "running",
    "Completed",
    "COMPLETED",
    "FAILED",
    "failed",
    "CANCELLED",
    "canceled",
    "SKIPPED",
    "PENDING",
    "STARTED",
    "initialized",
    "ok",
    "success",
    "error",
    "Done",
]
ATTEMPT = st.one_of(
    st.none(), st.integers(0, 3), st.just(True), st.just("2"), st.just(1.0), st.just(2**31)
)
ERROR = st.one_of(
    st.none(),
    st.text(alphabet='ab é\n"\\', max_size=5),
    st.integers(-5, 5),
    st.booleans(),
    st.dictionaries(st.sampled_from(["code", "k", "message"]), st.integers(0, 9), max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
)


@st.composite
def event_specs(draw: st.DrawFn) -> dict[str, Any]:
    where = draw(st.sampled_from(["context", "meta", "both"]))
    context: dict[str, Any] = {}
    meta: dict[str, Any] | None = None
    attempt, error = draw(ATTEMPT), draw(ERROR)
    if where in ("context", "both"):
        if attempt is not None:
            context["attempt"] = attempt
        if error is not None:
            context["error"] = error
    if where in ("meta", "both"):
        meta = {}
        attempt2 = draw(ATTEMPT)
        if attempt2 is not None:
            meta["attempt"] = attempt2
        if error is not None and draw(st.booleans()):
            meta["error"] = {"from": "meta"}
    return {
        "event_type": draw(st.sampled_from(EVENT_TYPES)),
        "status": draw(st.sampled_from(STATUSES)),
        "step": draw(st.sampled_from(["a", "b", "c", "", "pb/path"])),
        "micros": draw(st.integers(0, 6)),
        "context": draw(st.sampled_from([context, context, [1], "text"])),
        "meta": meta,
    }


TRACE = st.lists(event_specs(), min_size=1, max_size=25)
IDS = st.lists(
    st.text(alphabet="aB0_é€z", min_size=1, max_size=3), min_size=25, max_size=25, unique=True
)

_run = itertools.count()

Conn = psycopg.AsyncConnection[Any]
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


def build(
    specs: list[dict[str, Any]], ids: list[str], execution_ids: list[str]
) -> list[ExecutorEvent]:
    out = []
    for i, spec in enumerate(specs):
        out.append(
            ExecutorEvent(
                execution_id=execution_ids[i % len(execution_ids)],
                event_id=ids[i],
                event_type=spec["event_type"],
                step=spec["step"],
                status=spec["status"],
                created_at=T0 + timedelta(microseconds=spec["micros"]),
                context=spec["context"],
                meta=spec["meta"],
            )
        )
    return out


async def steps_of(conn: Conn, keys: list[tuple[str, str]]) -> dict[tuple[str, str], StepState]:
    """`noetl.step_status_of` for each key (keys without a step return no row)."""
    cur = await conn.execute(STEPS_OF, ([k[0] for k in keys], [k[1] for k in keys]))
    return {(st.execution_id, st.step): st for st in (StepState(*r) for r in await cur.fetchall())}


async def executions_of(conn: Conn, execution_ids: list[str]) -> dict[str, ExecutionState]:
    """`noetl.execution_status_of` for each id (unknown ids return no row)."""
    cur = await conn.execute(EXECUTIONS_OF, (execution_ids,))
    return {r[0]: ExecutionState(*r) for r in await cur.fetchall()}


async def check_rebuild(conn: Conn, execution_ids: list[str]) -> None:
    """Remove this trace's rows from the state tables, then rebuild them from the whole log."""
    for table in ("step_state", "execution_state"):
        await conn.execute(
            f"DELETE FROM noetl.{table} WHERE execution_id = ANY(%s)",
            (execution_ids,),
        )
    await rebuild(conn)


async def check(url: str, events: list[ExecutorEvent], batches: list[list[ExecutorEvent]]) -> None:
    execution_ids = sorted({ev.execution_id for ev in events})
    steps, executions = fold_all(events)
    # Every (execution, step) the trace names, also those that form no step (empty step names,
    # execution-level events), and an execution id with no events.
    keys = sorted({(ev.execution_id, ev.step) for ev in events})
    unknown = execution_ids[0] + "-none"
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        seen: set[tuple[str, str]] = set()
        for batch in batches:
            fresh = []
            for ev in batch:  # the sink stores each (execution_id, event_id) once
                key = (ev.execution_id, ev.resolved_event_id())
                if key not in seen:
                    seen.add(key)
                    fresh.append(ev)
            await insert_events(conn, fresh)
            await Projector(url, max_events=4).once()
        assert await read_steps(conn, "noetl.step_status", execution_ids) == steps
        assert await read_steps(conn, "noetl.step_state", execution_ids) == steps
        assert await read_executions(conn, "noetl.execution_status", execution_ids) == executions
        assert await read_executions(conn, "noetl.execution_state", execution_ids) == executions
        assert await steps_of(conn, [*keys, (unknown, "a")]) == steps
        assert await executions_of(conn, [*execution_ids, unknown]) == executions
        await check_rebuild(conn, execution_ids)
        assert await read_steps(conn, "noetl.step_state", execution_ids) == steps
        assert await read_executions(conn, "noetl.execution_state", execution_ids) == executions
    finally:
        await conn.close()


@settings(
    max_examples=int(os.environ.get("PROJECTOR_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    specs=TRACE,
    ids=IDS,
    n_exec=st.integers(1, 2),
    dup=st.lists(st.integers(0, 24), max_size=6),
    order=st.randoms(use_true_random=False),
    cuts=st.lists(st.integers(0, 30), max_size=3),
)
def test_fold_views_and_tables_agree(
    database_url: str,
    specs: list[dict[str, Any]],
    ids: list[str],
    n_exec: int,
    dup: list[int],
    order: Any,
    cuts: list[int],
) -> None:
    run = next(_run)
    events = build(specs, ids, [f"p{run}-{k}" for k in range(n_exec)])
    events += [events[i % len(events)] for i in dup]  # duplicates
    order.shuffle(events)  # arrival order is random
    bounds = sorted({min(c, len(events)) for c in cuts} | {0, len(events)})
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    asyncio.run(check(database_url, events, batches))
