"""Monthly partitions: created ahead by `projector project` (and `db partitions`), and retention
(`projector db retention`) that drops whole months the projector has projected, never rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from projector import partitions
from projector.cli import run
from projector.envelope import ExecutorEvent
from projector.projection import Projector
from tests.eventlog import insert_events

Conn = psycopg.AsyncConnection[Any]


def event(execution_id: str, when: datetime, n: int = 0) -> ExecutorEvent:
    return ExecutorEvent(
        execution_id=execution_id,
        event_id=str(n),
        event_type="step.exit",
        step="s",
        status="COMPLETED",
        created_at=when,
    )


async def tables(conn: Conn) -> set[str]:
    cur = await conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'noetl.event'::regclass"
    )
    return {str(r[0]) for r in await cur.fetchall()}


async def scalar(conn: Conn, sql: str) -> Any:
    cur = await conn.execute(sql)  # type: ignore[arg-type]
    row = await cur.fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
async def old_months(aconn: Conn) -> Conn:
    """January to March 2025 as partitions (one more, for 2024-12, under a name of its own),
    with events in three of them, in the default partition, and now."""
    await aconn.execute("SELECT noetl.ensure_event_partitions('2025-01-01', 3)")
    await aconn.execute(
        "CREATE TABLE noetl.archive_dec PARTITION OF noetl.event "
        "FOR VALUES FROM ('2024-12-01 00:00+00') TO ('2025-01-01 00:00+00')"
    )
    await insert_events(
        aconn,
        [
            event("dec", datetime(2024, 12, 30, tzinfo=UTC)),
            event("jan", datetime(2025, 1, 5, tzinfo=UTC)),
            event("jan", datetime(2025, 1, 6, tzinfo=UTC), 1),
            event("feb", datetime(2025, 2, 1, tzinfo=UTC)),
            event("ancient", datetime(2001, 1, 1, tzinfo=UTC)),  # the default partition
            event("new", datetime.now(UTC)),
        ],
    )
    return aconn


async def test_the_plan_reads_months_rows_and_what_the_projector_has_not_read(
    old_months: Conn,
) -> None:
    plan = await partitions.plan_retention(old_months, timedelta(days=180))
    assert [m.name for m in plan.months] == [
        "noetl.archive_dec",
        "noetl.event_2025_01",
        "noetl.event_2025_02",
        "noetl.event_2025_03",
    ]
    assert [(m.rows, m.executions) for m in plan.months] == [(1, 1), (2, 1), (1, 1), (0, 0)]
    assert plan.months[1].lower == datetime(2025, 1, 1, tzinfo=UTC)
    assert plan.months[1].upper == datetime(2025, 2, 1, tzinfo=UTC)
    assert all(m.bytes > 0 for m in plan.months)
    assert plan.default_rows == 1
    # Never projected: every row is unread, an empty month is not.
    assert plan.checkpoint is None
    assert [m.unprojected for m in plan.months] == [1, 2, 1, 0]
    assert [m.table for m in plan.refused] == ["archive_dec", "event_2025_01", "event_2025_02"]
    assert await partitions.drop_months(old_months, plan) == []

    await Projector(str(old_months.info.dsn)).once()
    projected = await partitions.plan_retention(old_months, timedelta(days=180))
    assert projected.checkpoint is not None and projected.refused == ()


def cli(url: str, *argv: str) -> int:
    return run(["--database-url", url, "db", "retention", *argv])


async def test_retention_refuses_until_projected_then_drops_whole_months(
    old_months: Conn, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    before = await tables(old_months)
    assert await asyncio.to_thread(cli, database_url, "--older-than", "26w") == 1
    out, err = capfd.readouterr()
    assert "noetl.event_2025_01  2025-01-01 .. 2025-02-01  2 rows" in out
    assert "REFUSED: 2 not projected yet" in out
    assert "refused, nothing dropped" in err and "`projector project` has never run" in err
    assert "projector project --once" in err
    assert await tables(old_months) == before

    await Projector(database_url).once()
    assert await asyncio.to_thread(cli, database_url, "--older-than", "180d", "--dry-run") == 0
    out, _ = capfd.readouterr()
    assert "in all: 4 partition(s), 4 rows" in out and "dry run: nothing dropped" in out
    assert "noetl.step_state and noetl.execution_state keep their rows" in out
    assert await tables(old_months) == before

    assert await asyncio.to_thread(cli, database_url, "--older-than", "180d") == 0
    out, _ = capfd.readouterr()
    assert "dropped 4 partition(s): noetl.archive_dec, noetl.event_2025_01" in out
    assert "noetl.event_default keeps its 1 event(s) older than the cut" in out
    assert await tables(old_months) == before - {
        "archive_dec",
        "event_2025_01",
        "event_2025_02",
        "event_2025_03",
    }
    events = await old_months.execute("SELECT execution_id FROM noetl.event ORDER BY 1")
    assert [r[0] for r in await events.fetchall()] == ["ancient", "new"]
    # The state tables are not touched: the dropped executions keep their rows.
    kept = await scalar(
        old_months,
        "SELECT count(*) FROM noetl.execution_state WHERE execution_id IN ('dec', 'jan', 'feb')",
    )
    assert kept == 3
    assert await asyncio.to_thread(cli, database_url, "--older-than", "180d") == 0
    assert "nothing to drop" in capfd.readouterr().out


async def test_a_month_that_got_a_late_event_is_refused_again(
    old_months: Conn, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    await Projector(database_url).once()
    await insert_events(old_months, [event("late", datetime(2025, 2, 3, tzinfo=UTC))])
    assert await asyncio.to_thread(cli, database_url, "--older-than", "180d") == 1
    out, err = capfd.readouterr()
    assert "noetl.event_2025_02" in out and "REFUSED: 1 not projected yet" in out
    assert "at or after the projector's checkpoint" in err


async def test_rows_that_arrive_after_the_plan_make_the_drop_drop_nothing(
    old_months: Conn, database_url: str
) -> None:
    await Projector(database_url).once()
    plan = await partitions.plan_retention(old_months, timedelta(days=180))
    assert plan.refused == ()
    await insert_events(old_months, [event("late", datetime(2025, 1, 20, tzinfo=UTC))])
    before = await tables(old_months)
    assert await partitions.drop_months(old_months, plan) == []
    assert await tables(old_months) == before  # the detach was rolled back with the rest
    assert await scalar(old_months, "SELECT count(*) FROM noetl.event_2025_01") == 3


def _month(offset: int) -> str:
    today = datetime.now(UTC)
    index = today.year * 12 + today.month - 1 + offset
    return f"event_{index // 12:04d}_{index % 12 + 1:02d}"


async def test_project_creates_the_partitions_ahead(
    aconn: Conn, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    far = _month(5)
    assert far not in await tables(aconn)
    argv = ["--database-url", database_url, "project", "--once", "--partitions-ahead", "5"]
    assert await asyncio.to_thread(run, argv) == 0
    assert {_month(4), far} <= await tables(aconn)
    capfd.readouterr()


async def test_the_upkeep_runs_again_at_each_interval(aconn: Conn, database_url: str) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(partitions.upkeep(database_url, 1, stop, interval=0.05))
    try:
        for _ in range(2):  # created, dropped, created again by a later round
            for _ in range(400):
                if _month(1) in await tables(aconn):
                    break
                await asyncio.sleep(0.025)
            assert _month(1) in await tables(aconn)
            await aconn.execute(f"DROP TABLE noetl.{_month(1)}")  # type: ignore[arg-type]
    finally:
        stop.set()
        await task


async def test_upkeep_failures_are_logged_and_retried(
    empty_database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    stop = asyncio.Event()
    with caplog.at_level("WARNING", logger="projector.partitions"):
        task = asyncio.create_task(partitions.upkeep(empty_database_url, 1, stop, interval=0.01))
        for _ in range(400):
            if sum("partition upkeep failed" in r.getMessage() for r in caplog.records) >= 2:
                break
            await asyncio.sleep(0.025)
        stop.set()
        await task
    failures = [r.getMessage() for r in caplog.records if "upkeep failed" in r.getMessage()]
    assert len(failures) >= 2 and "projector db upgrade" in failures[0]


def test_db_partitions_creates_the_months_asked_for(
    database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run(["--database-url", database_url, "db", "partitions", "--ahead", "0"]) == 0
    assert capfd.readouterr().out == "created 0 partition(s)\n"  # the migration made them
    assert run(["--database-url", database_url, "db", "partitions", "--ahead", "6"]) == 0
    assert capfd.readouterr().out == "created 3 partition(s)\n"
