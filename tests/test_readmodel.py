"""projector.readmodel against the real PostgreSQL (tests/test_readme.py runs its README block)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from projector import readmodel
from projector.envelope import ExecutorEvent
from projector.errors import SchemaMissing, UnknownExecution
from projector.fold import fold_all
from projector.projection import Projector
from projector.readmodel import ExecutionStatus, HistoryEvent, StepStatus
from tests.eventlog import insert_events, trace_events
from tests.test_projection import T0, trace

Conn = psycopg.AsyncConnection[Any]


def samples() -> list[ExecutorEvent]:
    """The bundled sample executions (what `projector demo` stores)."""
    events = []
    for name in ("success", "retried", "failed"):
        text = (resources.files("projector.samples") / f"{name}.ndjson").read_text("utf-8")
        events += [ExecutorEvent.parse_json(line) for line in text.splitlines() if line.strip()]
    return events


async def test_status_and_steps_are_the_fold(aconn: Conn) -> None:
    events = trace("r-1", 3)
    await insert_events(aconn, reversed(events))
    steps, executions = fold_all(events)
    status = await readmodel.execution_status(aconn, "r-1")
    assert isinstance(status, ExecutionStatus)
    assert dataclasses.asdict(status) == dataclasses.asdict(executions["r-1"])
    rows = await readmodel.step_statuses(aconn, "r-1")
    assert all(isinstance(r, StepStatus) for r in rows)
    assert [r.step for r in rows] == ["step0", "step1", "step2"]  # the order they started
    assert [dataclasses.asdict(r) for r in rows] == [
        dataclasses.asdict(steps[("r-1", f"step{i}")]) for i in range(3)
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        status.status = "FAILED"  # type: ignore[misc]


async def test_integer_ids_are_read_as_their_text(aconn: Conn) -> None:
    events = [e for e in samples() if e.execution_id == "7288213371283718001"]
    await insert_events(aconn, events)
    status = await readmodel.execution_status(aconn, 7288213371283718001)
    assert status.execution_id == "7288213371283718001"
    assert [s.attempts for s in await readmodel.step_statuses(aconn, 7288213371283718001)] == [
        1,
        2,
        1,
    ]


async def test_history_in_fold_order_with_normalised_status(aconn: Conn) -> None:
    events = trace("h-1", 2)
    await insert_events(aconn, reversed(events))
    history = await readmodel.history(aconn, "h-1")
    assert all(isinstance(e, HistoryEvent) for e in history)
    assert [e.event_type for e in history] == [e.event_type for e in events]
    first = history[0]
    assert (first.status, first.normalized_status, first.attempt) == (
        "initialized",
        "RUNNING",
        None,
    )
    only = await readmodel.history(aconn, "h-1", step="step1")
    assert [e.event_type for e in only] == ["step.enter", "step.exit", "command.completed"]
    assert await readmodel.history(aconn, "h-1", step="no-such-step") == []


async def test_unknown_execution_raises(aconn: Conn) -> None:
    await insert_events(aconn, trace("known", 1))
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: readmodel.execution_status(aconn, "nope"),
        lambda: readmodel.step_statuses(aconn, "nope"),
        lambda: readmodel.history(aconn, "nope"),
        lambda: readmodel.history(aconn, "nope", step="step0"),
    ]
    for call in calls:
        with pytest.raises(UnknownExecution, match="nope") as info:
            await call()
        assert info.value.execution_id == "nope"


async def test_an_execution_without_steps_has_no_step_rows(aconn: Conn) -> None:
    only_playbook = [trace("bare", 0)[0]]  # one playbook.initialized, no step
    await insert_events(aconn, only_playbook)
    assert await readmodel.step_statuses(aconn, "bare") == []
    status = await readmodel.execution_status(aconn, "bare")
    assert (status.status, status.step_count) == ("RUNNING", 0)


async def test_executions_newest_first_normalised_status_and_limit(
    aconn: Conn, database_url: str
) -> None:
    await insert_events(aconn, trace("old", 1, offset=0))
    await Projector(database_url).once()
    await insert_events(aconn, trace("new", 1, offset=500)[:-1])  # running, not projected
    rows = await readmodel.executions(aconn)
    assert [(r.execution_id, r.status) for r in rows] == [("new", "RUNNING"), ("old", "COMPLETED")]
    assert [r.execution_id for r in await readmodel.executions(aconn, status="ok")] == ["old"]
    assert [r.execution_id for r in await readmodel.executions(aconn, limit=1)] == ["new"]
    assert await readmodel.executions(aconn, status="FAILED") == []
    # A range of start times: at or after `since`, before `until` (the projected row and the
    # one folded from the log alike).
    new_start = T0 + timedelta(seconds=500)

    async def between(**bounds: datetime) -> list[str]:
        return [r.execution_id for r in await readmodel.executions(aconn, **bounds)]

    assert await between(since=new_start) == ["new"]
    assert await between(until=new_start) == ["old"]
    assert await between(since=T0, until=new_start + timedelta(microseconds=1)) == ["new", "old"]
    assert await between(since=new_start, until=new_start) == []
    with pytest.raises(ValueError, match="limit"):
        await readmodel.executions(aconn, limit=0)
    # a typo is refused, as by the command and the web view (in an event it would mean RUNNING)
    with pytest.raises(ValueError, match="'bogus' is not a status"):
        await readmodel.executions(aconn, status="bogus")


async def test_any_row_factory_and_jsonable(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(
        database_url, autocommit=True, row_factory=dict_row
    ) as conn:
        await insert_events(conn, trace("j", 1))
        status = await readmodel.execution_status(conn, "j")
        history = await readmodel.history(conn, "j")
        assert await readmodel.history(conn, "j", step="none") == []
        with pytest.raises(UnknownExecution):
            await readmodel.step_statuses(conn, "nope")
    doc = readmodel.jsonable(status)
    assert list(doc) == [f.name for f in dataclasses.fields(ExecutionStatus)]
    assert datetime.fromisoformat(doc["started_at"]) == T0 and doc["finished_at"] is not None
    assert json.loads(json.dumps(readmodel.jsonable(history[1])))["context"] == {}


async def test_unmigrated_database_is_schema_missing(empty_database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_database_url) as conn:
        with pytest.raises(SchemaMissing, match="projector db upgrade"):
            await readmodel.execution_status(conn, "x")


async def test_children_are_the_fold_of_the_executions_naming_their_parent(aconn: Conn) -> None:
    events = trace_events("noetl_cli_subscribe_ok.ndjson")
    await insert_events(aconn, events)
    _, executions = fold_all(events)
    kids = await readmodel.children(aconn, 386072706271334400)
    assert [c.execution_id for c in kids] == ["386072706292305920", "386072706309083136"]
    assert all(isinstance(c, ExecutionStatus) for c in kids)
    assert [dataclasses.asdict(c) for c in kids] == [
        dataclasses.asdict(executions[c.execution_id]) for c in kids
    ]
    assert await readmodel.children(aconn, "386072706292305920") == []
    assert await readmodel.children(aconn, "no-such-run") == []


def _live(execution_id: str, minutes_ago: list[tuple[float, str, str, str]]) -> list[ExecutorEvent]:
    now = datetime.now(UTC)
    return [
        ExecutorEvent(
            execution_id=execution_id,
            event_id=str(i),
            event_type=event_type,
            step=step,
            status=status,
            created_at=now - timedelta(minutes=m),
        )
        for i, (m, event_type, step, status) in enumerate(minutes_ago)
    ]


async def test_stalled_executions_by_last_progress(aconn: Conn, database_url: str) -> None:
    stuck = _live(
        "stuck",
        [
            (40, "step.enter", "a", "RUNNING"),
            (30, "step.exit", "a", "COMPLETED"),
            (1, "checkpoint.committed", "checkpointer", "OK"),  # keeps last_event_at moving
        ],
    )
    busy = _live("busy", [(50, "step.enter", "a", "RUNNING"), (1, "call.done", "a", "RUNNING")])
    done = _live(
        "done", [(90, "step.exit", "a", "COMPLETED"), (80, "playbook.completed", "p", "ok")]
    )
    await insert_events(aconn, stuck + busy + done)
    for projected in (False, True):  # exact before and after the projector ran
        ten = await readmodel.executions(aconn, stalled_for=timedelta(minutes=10))
        assert [r.execution_id for r in ten] == ["stuck"], projected
        assert ten[0].last_progress_at == stuck[1].created_at
        assert ten[0].last_event_at == stuck[2].created_at
        short = await readmodel.executions(aconn, stalled_for=timedelta(seconds=20))
        assert [r.execution_id for r in short] == ["stuck", "busy"]  # newest first
        assert await readmodel.executions(aconn, stalled_for=timedelta(hours=1)) == []
        await Projector(database_url).once()
    with pytest.raises(ValueError, match="stalled_for"):
        await readmodel.executions(aconn, stalled_for=timedelta(0))
