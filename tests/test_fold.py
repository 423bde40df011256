"""The status rules on hand-written traces: Python reference and SQL views side by side."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from projector.envelope import ExecutorEvent
from projector.fold import (
    explicit_attempt,
    fold_all,
    fold_step,
    is_execution_event,
    normalize_status,
)
from tests.eventlog import insert_events, read_executions, read_steps

T0 = datetime(2026, 1, 20, 11, 56, 27, 292930, tzinfo=UTC)


def ev(
    n: int,
    event_type: str,
    status: str | None,
    *,
    step: str = "s",
    seconds: float | None = None,
    execution_id: str = "x1",
    context: Any = None,
    meta: dict[str, Any] | None = None,
) -> ExecutorEvent:
    return ExecutorEvent(
        execution_id=execution_id,
        event_id=f"{n:04d}",
        event_type=event_type,
        step=step,
        status=status,
        created_at=T0 + timedelta(seconds=n if seconds is None else seconds),
        context={} if context is None else context,
        meta=meta,
    )


@pytest.mark.parametrize(
    ("status", "event_type", "expected"),
    [
        (" ok ", "x", "COMPLETED"),
        ("Success", "x", "COMPLETED"),
        ("succeeded", "x", "COMPLETED"),
        ("DONE", "x", "COMPLETED"),
        ("error", "x", "FAILED"),
        ("failure", "x", "FAILED"),
        ("canceled", "x", "CANCELLED"),
        ("STARTED", "x", "RUNNING"),
        ("initialized", "x", "INITIALIZED"),
        (None, "call.error", "FAILED"),
        ("", "command.failed", "FAILED"),
        ("  ", "call.done", "COMPLETED"),
        (None, "step.exit", "COMPLETED"),
        (None, "Command.COMPLETED", "COMPLETED"),
        (None, "command.heartbeat", "RUNNING"),
        ("straße", "x", "STRAßE"),
    ],
)
async def test_normalize_status_python_and_sql(
    aconn: psycopg.AsyncConnection[Any], status: str | None, event_type: str, expected: str
) -> None:
    assert normalize_status(status, event_type) == expected
    cur = await aconn.execute("SELECT noetl.normalize_status(%s, %s)", (status, event_type))
    assert await cur.fetchone() == (expected,)


@pytest.mark.parametrize(
    ("context", "meta", "expected"),
    [
        ({"attempt": 2}, None, 2),
        ({"attempt": 0}, {"attempt": 3}, 3),
        ({"attempt": True}, None, None),
        ({"attempt": "2"}, None, None),
        ({"attempt": 2.0}, None, None),
        ({"attempt": 2**31}, {"attempt": 4}, 4),
        ([1, 2], {"attempt": 5}, 5),
        ("text", None, None),
    ],
)
async def test_explicit_attempt_python_and_sql(
    aconn: psycopg.AsyncConnection[Any], context: Any, meta: Any, expected: int | None
) -> None:
    from psycopg.types.json import Jsonb

    assert explicit_attempt(context, meta) == expected
    cur = await aconn.execute(
        "SELECT noetl.event_attempt(%s, %s)",
        (Jsonb(context), None if meta is None else Jsonb(meta)),
    )
    assert await cur.fetchone() == (expected,)


def test_execution_events() -> None:
    assert is_execution_event("playbook.completed")
    assert is_execution_event("workflow.initialized")
    assert is_execution_event("execution.cancelled")
    assert not is_execution_event("step.exit")


def test_late_running_after_exit_stays_completed() -> None:
    st = fold_step(
        [
            ev(3, "command.completed", "RUNNING"),
            ev(1, "step.enter", "RUNNING"),
            ev(2, "step.exit", "COMPLETED"),
        ]
    )
    assert (st.status, st.attempts, st.finished_at) == ("COMPLETED", 1, T0 + timedelta(seconds=2))
    assert st.last_event_type == "command.completed"
    assert st.event_count == 3


def test_equal_timestamps_terminal_first() -> None:
    st = fold_step(
        [ev(1, "command.heartbeat", "RUNNING", seconds=1), ev(2, "step.exit", "OK", seconds=1)]
    )
    assert st.status == "COMPLETED"
    assert st.last_event_type == "command.heartbeat"


def test_retry_opens_new_attempt() -> None:
    st = fold_step(
        [
            ev(1, "step.enter", None),
            ev(2, "call.error", None, context={"error": "boom"}),
            ev(3, "step.retry", "RUNNING"),
            ev(4, "call.error", "error", meta={"error": {"code": 7}}),
        ]
    )
    assert (st.status, st.attempts, st.error) == ("FAILED", 2, '{"code": 7}')


def test_explicit_attempts_and_stragglers() -> None:
    st = fold_step(
        [
            ev(1, "command.started", "STARTED", context={"attempt": 1}),
            ev(2, "command.failed", "FAILED", context={"attempt": 1}),
            ev(3, "command.started", "RUNNING", context={"attempt": 2}),
            ev(4, "command.completed", "COMPLETED", meta={"attempt": 2}),
            ev(5, "command.failed", "FAILED", context={"attempt": 1}),  # straggler
        ]
    )
    assert (st.status, st.attempts, st.error) == ("COMPLETED", 2, None)


def test_duplicates_count_once() -> None:
    a = ev(1, "step.enter", "RUNNING")
    st = fold_step([a, a, ev(2, "step.exit", "COMPLETED")])
    assert st.event_count == 2


SCENARIO = [
    ev(0, "playbook.initialized", "initialized", step="pb/path"),
    ev(1, "step.enter", "RUNNING", step="a"),
    ev(2, "step.exit", "COMPLETED", step="a"),
    ev(3, "command.completed", "RUNNING", step="a"),
    ev(4, "step.enter", None, step="b"),
    ev(5, "call.error", None, step="b", context={"error": {"msg": "x", "retry": False}}),
    ev(6, "command.heartbeat", "RUNNING", step="c"),
    ev(7, "loop.item", None, step=""),
    ev(8, "playbook.failed", "failed", step="pb/path"),
    ev(9, "command.issued", "PENDING", step="d", execution_id="x2"),
]


async def test_views_equal_python_fold(aconn: psycopg.AsyncConnection[Any]) -> None:
    await insert_events(aconn, reversed(SCENARIO))
    steps, executions = fold_all(SCENARIO)
    assert await read_steps(aconn, "noetl.step_status") == steps
    assert await read_executions(aconn, "noetl.execution_status") == executions
    x1 = executions["x1"]
    assert (x1.status, x1.step_count, x1.steps_completed, x1.steps_failed, x1.steps_running) == (
        "FAILED",
        3,
        1,
        1,
        1,
    )
    assert x1.event_count == 9
    assert steps[("x1", "b")].error == '{"msg": "x", "retry": false}'
    assert executions["x2"].status == "RUNNING"
