"""The status, history, executions, project and rebuild commands, run in-process."""

from __future__ import annotations

import argparse
import json
from typing import Any

import psycopg
import pytest
from rich.console import Console

from projector.cli import project_commands, status_commands
from tests.eventlog import insert_events
from tests.test_projection import trace

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
    for argv in (["status", "nope"], ["history", "nope"]):
        assert await run(argv, database_url) == 1
        captured = capsys.readouterr()
        assert "nope" in captured.err and captured.out == ""


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
