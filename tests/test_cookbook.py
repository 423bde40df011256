"""docs/cookbook.md: each query runs and answers what its title asks, projected or not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from bench.scenarios.point_queries import cookbook_queries
from projector.envelope import ExecutorEvent
from projector.projection import Projector
from tests.eventlog import insert_events

Conn = psycopg.AsyncConnection[Any]
QUERIES = cookbook_queries()


def history(now: datetime) -> list[ExecutorEvent]:
    def ev(
        execution: str, event_type: str, step: str, status: str | None, ago: timedelta, **more: Any
    ) -> ExecutorEvent:
        return ExecutorEvent(
            execution_id=execution,
            event_type=event_type,
            step=step,
            status=status,
            created_at=now - ago,
            **more,
        )

    hour, day = timedelta(hours=1), timedelta(days=1)
    return [
        # Failed 2 hours ago (in the 24 hours), with an error; its playbook started then.
        ev("new", "playbook.initialized", "playbooks/bench/p7", "initialized", 2 * hour),
        ev("new", "step.enter", "fetch", "RUNNING", 2 * hour),
        ev(
            "new",
            "command.failed",
            "fetch",
            "FAILED",
            2 * hour - timedelta(minutes=1),
            context={"error": "boom"},
        ),
        # Completed 3 days ago, took 30 s; failed 2 days ago (outside the 24 hours).
        ev("old", "playbook.initialized", "playbooks/bench/p8", "initialized", 3 * day),
        ev("old", "step.enter", "load", "RUNNING", 3 * day),
        ev("old", "step.exit", "load", "COMPLETED", 3 * day - timedelta(seconds=30)),
        ev("old", "step.enter", "save", "RUNNING", 2 * day),
        ev("old", "command.failed", "save", "FAILED", 2 * day, context={"error": "old"}),
        # A command.failed 10 minutes ago.
        ev("now", "command.failed", "push", None, timedelta(minutes=10)),
    ]


@pytest.mark.parametrize("projected", [False, True])
async def test_cookbook_answers(aconn: Conn, database_url: str, projected: bool) -> None:
    now = datetime.now(UTC)
    await insert_events(aconn, history(now))
    if projected:
        await Projector(database_url).once()

    async def answer(title: str) -> list[tuple[Any, ...]]:
        cur = await aconn.execute(QUERIES[title])  # type: ignore[arg-type]
        return await cur.fetchall()

    failed = await answer("Which steps failed in the last 24 hours, and why")
    assert {(r[0], r[1], r[5]) for r in failed} >= {("new", "fetch", "boom")}
    assert "save" not in {r[1] for r in failed}
    durations = await answer("p50 / p95 duration per step over the last 7 days")
    assert [(r[0], r[1], r[2], r[3]) for r in durations] == [
        ("load", 1, timedelta(seconds=30), timedelta(seconds=30))
    ]
    week = now - timedelta(days=now.weekday())
    runs = await answer("Executions of playbook X this week")
    expected = [("new", "RUNNING")] if (now - timedelta(hours=2)).date() >= week.date() else []
    assert [(r[0], r[1]) for r in runs] == expected
    events = await answer("All command.failed events in the last hour")
    assert [(r[1], r[2]) for r in events] == [("now", "push")]
