"""The status, history, executions, project and rebuild commands, run in-process."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from rich.console import Console

from projector.cli import project_commands, status_commands
from projector.envelope import ExecutorEvent
from tests.eventlog import insert_events, trace_events
from tests.test_projection import ev, trace

Conn = psycopg.AsyncConnection[Any]


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="projector")
    sub = parser.add_subparsers(required=True)
    status_commands.register(sub)
    project_commands.register(sub)
    return parser.parse_args(argv)


async def run(argv: list[str], db: str) -> int:
    args = parse(argv)
    result: int = await args.handler(args, db)
    return result


async def test_status_plain_and_json(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert_events(aconn, trace("x-1", 2))
    assert await run(["status", "x-1"], database_url) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # plain text when not a terminal
    assert "x-1" in out and "COMPLETED" in out and "step0" in out and "step1" in out
    assert await run(["status", "x-1", "--json"], database_url) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["status"] == "COMPLETED"
    assert [s["status"] for s in doc["steps"]] == ["COMPLETED", "COMPLETED"]


async def test_unknown_execution_exits_1(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Every command that reads one execution says so on the error boundary's one line.
    from projector.cli import run as cli_run

    for command in ("status", "history", "timeline", "watch"):
        argv = ["--database-url", database_url, command, "nope"]
        assert await asyncio.to_thread(cli_run, argv) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err == "projector: error: no events are stored for execution 'nope'\n"


async def test_history_in_fold_order(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = trace("h", 2)
    await insert_events(aconn, reversed(events))
    assert await run(["history", "h", "--json"], database_url) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["event_type"] for e in doc] == [e.event_type for e in events]
    assert await run(["history", "h", "--step", "step1", "--json"], database_url) == 0
    assert {e["step"] for e in json.loads(capsys.readouterr().out)} == {"step1"}
    assert await run(["history", "h"], database_url) == 0
    assert "step.exit" in capsys.readouterr().out


async def test_executions_newest_first_exact_before_projection(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert_events(aconn, trace("old", 1, offset=0))
    assert await run(["project", "--once"], database_url) == 0
    capsys.readouterr()
    unfinished = trace("new", 1, offset=500)[:-1]  # no playbook.completed yet, not projected
    await insert_events(aconn, unfinished)
    assert await run(["executions", "--json"], database_url) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["execution_id"], r["status"]) for r in rows] == [
        ("new", "RUNNING"),
        ("old", "COMPLETED"),
    ]
    assert await run(["executions", "--status", "ok", "--limit", "5", "--json"], database_url) == 0
    assert [r["execution_id"] for r in json.loads(capsys.readouterr().out)] == ["old"]
    assert await run(["executions"], database_url) == 0
    assert "new" in capsys.readouterr().out


async def test_project_once_and_rebuild_commands(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert_events(aconn, trace("p", 2))
    assert await run(["project", "--once"], database_url) == 0
    assert "projected 8 events" in capsys.readouterr().out
    assert await run(["rebuild"], database_url) == 0
    assert "rebuilt 2 steps of 1 executions" in capsys.readouterr().out


async def test_print_status_tables(aconn: Conn, database_url: str) -> None:
    await insert_events(aconn, trace("d1", 1) + trace("d2", 2))
    console = Console(record=True, width=200)
    await status_commands.print_status_tables(database_url, ["d1", "d2"], console)
    text = console.export_text()
    assert "d1" in text and "d2" in text and "step1" in text


@pytest.mark.parametrize(
    "argv",
    [["status", "x"], ["history", "x"], ["executions"], ["project", "--once"], ["rebuild"]],
)
def test_unmigrated_database_is_an_environment_error(
    empty_database_url: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 3 with advice, as the README promises, not the exit 1 of an unknown execution."""
    from projector.cli import run

    assert run(["--database-url", empty_database_url, *argv]) == 3
    assert "projector db upgrade" in capsys.readouterr().err


async def test_status_says_settled_without_an_end_event(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    events = [
        ev("s-1", 1, "playbook.started", "STARTED", "tests/pb"),
        ev("s-1", 2, "step.exit", "COMPLETED", "a"),
        ev("s-1", 3, "call.error", "FAILED", "b", context={"error": "exit 3"}),
        ev("s-1", 4, "command.issued", "PENDING", "loop", meta={"command_id": "c1"}),
        ev("s-1", 5, "command.issued", "PENDING", "loop", meta={"command_id": "c2"}),
        ev("s-1", 6, "command.completed", "COMPLETED", "loop", meta={"command_id": "c1"}),
    ]
    await insert_events(aconn, events)
    assert await run(["status", "s-1"], database_url) == 0
    out = capsys.readouterr().out
    assert "RUNNING  started" in out  # loop still runs: not settled
    assert "open iterations 1" in out and "error exit 3" in out and "playbook tests/pb" in out
    row = next(line for line in out.splitlines() if line.startswith("loop"))
    assert row.split()[:5] == ["loop", "RUNNING", "1", "2", "1/0/1"]
    await insert_events(
        aconn, [ev("s-1", 7, "command.completed", "COMPLETED", "loop", meta={"command_id": "c2"})]
    )
    assert await run(["status", "s-1"], database_url) == 0
    out = capsys.readouterr().out
    assert "RUNNING (settled, 1 step failed, no end event)" in out
    assert await run(["status", "s-1", "--json"], database_url) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["status"], doc["settled"], doc["open_units"], doc["error"]) == (
        "RUNNING",
        True,
        0,
        "exit 3",
    )
    loop = next(s for s in doc["steps"] if s["step"] == "loop")
    assert (loop["iterations"], loop["iterations_completed"], loop["iterations_running"]) == (
        2,
        2,
        0,
    )
    assert (doc["parent"], doc["children"]) == (None, [])


async def test_status_of_a_parent_lists_its_children(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    await insert_events(aconn, trace_events("noetl_cli_subscribe_fail.ndjson"))
    assert await run(["status", "386072706458030080"], database_url) == 0
    out = capsys.readouterr().out
    assert "child executions: 2" in out
    for child in ("386072706470612992", "386072706483195904"):
        line = next(line for line in out.splitlines() if line.startswith(child))
        assert "FAILED" in line and "Command failed with exit code: Some(3)" in line
    assert await run(["status", "386072706470612992"], database_url) == 0
    out = capsys.readouterr().out
    assert "parent 386072706458030080  COMPLETED" in out
    assert await run(["status", "386072706470612992", "--json"], database_url) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["parent"]["execution_id"] == "386072706458030080"
    assert doc["parent"]["status"] == "COMPLETED"


async def test_executions_stalled(
    aconn: Conn, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    now = datetime.now(UTC)
    stuck = [
        ExecutorEvent(
            execution_id="stuck",
            event_id=str(i),
            event_type=t,
            step=s,
            status="OK" if t.startswith("checkpoint") else "RUNNING",
            created_at=now - timedelta(minutes=m),
        )
        for i, (m, t, s) in enumerate(
            [(30, "step.enter", "a"), (1, "checkpoint.committed", "checkpointer")]
        )
    ]
    await insert_events(aconn, stuck + trace("old", 1))
    assert await run(["executions", "--stalled", "10m", "--json"], database_url) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["execution_id"] for r in rows] == ["stuck"]
    assert datetime.fromisoformat(rows[0]["last_progress_at"]) == stuck[0].created_at
    assert await run(["executions", "--stalled", "1h30m"], database_url) == 0
    assert "stuck" not in capsys.readouterr().out
    assert await run(["executions", "--stalled", "90s"], database_url) == 0
    out = capsys.readouterr().out
    assert "stuck" in out and "last progress" in out and "old" not in out


@pytest.mark.parametrize("duration", ["10", "0s", "-5m", "5x", "m", "", "36526d"])
def test_stalled_needs_a_duration(duration: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        parse(["executions", "--stalled", duration])
    assert info.value.code == 2
    assert "--stalled" in capsys.readouterr().err
