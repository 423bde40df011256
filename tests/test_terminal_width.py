"""`status`, `history` and `executions` on narrow terminals: every id is shown whole (never cut,
never an ellipsis), and the other fields are still there."""

from __future__ import annotations

import io
from typing import Any

import psycopg
import pytest
from rich.console import Console

from projector.cli import status_commands
from tests.eventlog import insert_events, trace_events
from tests.factories import event
from tests.test_status_cli import run

Conn = psycopg.AsyncConnection[Any]

#: A real parent execution and its two children (tests/traces).
PARENT = "386072706458030080"
CHILDREN = ("386072706470612992", "386072706483195904")
#: An id longer than the narrowest terminal tried, and ids of the usual shapes.
LONG = "exec-" + "0123456789abcdef" * 4
UUID = "6f1c9a52-3b7e-4d0a-9c2e-8a5b1f7d3e64"


class Screen:
    """What the commands print, through a rich console of a given width (a terminal's)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.buffer = io.StringIO()
        self.width = 80
        monkeypatch.setattr(status_commands, "output_console", self._console)

    def _console(self, stderr: bool = False) -> Console:
        return Console(file=self.buffer, width=self.width, force_terminal=True, color_system=None)

    async def show(self, argv: list[str], db: str, width: int) -> str:
        self.width = width
        self.buffer.seek(0)
        self.buffer.truncate()
        assert await run(argv, db) == 0
        return self.buffer.getvalue()


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> Screen:
    return Screen(monkeypatch)


def assert_whole(out: str, *ids: str) -> None:
    assert "…" not in out, out
    for one in ids:
        assert one in out, (one, out)


@pytest.mark.parametrize("width", [80, 40])
async def test_executions_show_every_id_whole(
    aconn: Conn, database_url: str, screen: Screen, width: int
) -> None:
    await insert_events(aconn, trace_events("noetl_cli_subscribe_fail.ndjson"))
    await insert_events(
        aconn,
        [
            event(LONG, "1", status="FAILED", event_type="call.error", context={"error": "x" * 90}),
            event(UUID, "1"),
        ],
    )
    out = await screen.show(["executions"], database_url, width)
    assert_whole(out, PARENT, *CHILDREN, LONG, UUID)
    assert "FAILED" in out and "COMPLETED" in out
    assert all(len(line) <= width for line in out.splitlines() if LONG not in line)
    out = await screen.show(["executions", "--stalled", "1s"], database_url, width)
    assert "…" not in out


@pytest.mark.parametrize("width", [80, 40])
async def test_status_shows_the_execution_parent_and_children_whole(
    aconn: Conn, database_url: str, screen: Screen, width: int
) -> None:
    await insert_events(aconn, trace_events("noetl_cli_subscribe_fail.ndjson"))
    out = await screen.show(["status", PARENT], database_url, width)
    assert_whole(out, PARENT, *CHILDREN)
    assert "child executions: 2" in out
    out = await screen.show(["status", CHILDREN[0]], database_url, width)
    assert_whole(out, CHILDREN[0], f"parent {PARENT}")


@pytest.mark.parametrize("width", [80, 40])
async def test_history_is_one_block_per_event_with_ids_and_context(
    aconn: Conn, database_url: str, screen: Screen, width: int
) -> None:
    ids = [f"{UUID}-{n}" for n in range(3)]
    await insert_events(
        aconn,
        [
            event(LONG, event_id, at=n, context={"n": n, "pad": "y" * 100})
            for n, event_id in enumerate(ids)
        ],
    )
    out = await screen.show(["history", LONG], database_url, width)
    assert_whole(out, *ids)
    lines = out.splitlines()
    for n, event_id in enumerate(ids):
        at = lines.index(event_id)  # the id on a line of its own, then the facts, the context
        block = " ".join(lines[at + 1 : lines.index(ids[n + 1]) if n < 2 else len(lines)])
        facts, context = block.split("{", 1)
        assert "command.completed" in facts and "COMPLETED" in facts and "step-a" in facts
        assert context.startswith(f'"n":{n},"pad":"yyy')
    assert all(len(line) <= width for line in lines if line not in ids)
    assert sum(line.count("y") for line in lines) == 300  # the context folded, not cut


async def test_history_is_a_table_on_a_wide_terminal(
    aconn: Conn, database_url: str, screen: Screen
) -> None:
    await insert_events(aconn, [event(UUID, str(n), at=n) for n in range(2)])
    out = await screen.show(["history", UUID], database_url, 200)
    header = out.splitlines()[0].split()
    assert header == [
        "created_at",
        "step",
        "event_type",
        "status",
        "attempt",
        "event_id",
        "context",
    ]
