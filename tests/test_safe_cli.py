"""Producer text reaches the operator's terminal only escaped: ingest, demo, consume, CLI errors.

(`projector.cli.safe` itself is tested in test_safe.py.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest

import projector.cli as cli
from projector import ProjectorError
from projector.cli import project_commands, run
from projector.cli.demo_commands import _execution_ids
from tests.eventlog import INSERT, rows
from tests.factories import event
from tests.natsutil import Names, consume_argv

TITLE = "\x1b]0;owned\x07"
SHOWN = "\\u001b]0;owned\\u0007"


def _raw_controls(text: str) -> list[str]:
    """Control characters in `text` other than tab and newline (what a terminal would obey)."""
    return [ch for ch in text if (ord(ch) < 0x20 and ch not in "\t\n") or 0x7F <= ord(ch) < 0xA0]


def test_ingest_messages_escape_the_file_name_and_reasons(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = tmp_path / f"spool{TITLE}\x9b2J.ndjson"
    hostile.write_bytes(b'{"execution_id": 1}\nnot json\n')
    assert run(["--database-url", database_url, "ingest", str(hostile)]) == 1
    err = capsys.readouterr().err
    assert not _raw_controls(err), err
    assert f"spool{SHOWN}\\u009b2J.ndjson:line 1: rejected:" in err
    assert f"spool{SHOWN}\\u009b2J.ndjson:line 2: rejected:" in err


def test_demo_tables_escape_what_producers_stored(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = event(
        _execution_ids()[0],
        "hostile",
        event_type=f"call.done{TITLE}",
        step="[link=https://evil.example]x[/link]\x1b[2J",
        status="\x9b31m",
        worker_id="w\x1bP+q\x1b\\",
    )
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.cursor().executemany(INSERT, rows([hostile]))
    assert run(["--database-url", database_url, "demo"]) == 0
    out = capsys.readouterr().out
    # The event tables come first; the step status tables after them are projector.cli.
    # status_commands' (rendered there).
    events_part = out.split("step status")[0]
    assert not _raw_controls(events_part), events_part
    assert f"call.done{SHOWN}" in events_part
    assert "[link=https://evil.example]x[/link]\\u001b[2J" in events_part
    assert "w\\u001bP+q\\u001b\\" in events_part


async def test_consume_logs_escape_subjects_and_survive_one_that_is_not_utf8(
    nats_url: str, names: Names, database_url: str
) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.publish(f"{names.prefix}.x{TITLE}", b'{"not": "an envelope"}')
        # Subjects are bytes: nats-server takes any but white space, UTF-8 or not.
        nc._transport.write(b"PUB %b.\xff\xfe 2\r\n{}\r\n" % names.prefix.encode())
        await nc.flush()
        info = await js.stream_info(names.stream)
        assert info.state.messages == 2
    finally:
        await nc.close()
    proc = await asyncio.create_subprocess_exec(
        *consume_argv(database_url, nats_url, names, "--until-empty"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, raw = await asyncio.wait_for(proc.communicate(), 120)
    err = raw.decode("utf-8")  # valid UTF-8: the subject's bad bytes are escaped
    assert proc.returncode == 1, err  # a drain that rejected something, as `ingest`
    assert not _raw_controls(err), err
    assert f"on nats:{names.prefix}.x{SHOWN}: " in err
    assert f"on nats:{names.prefix}.\\xff\\xfe: " in err
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT source FROM noetl.event_rejected ORDER BY position")
        sources: list[Any] = [r[0] for r in await cur.fetchall()]
    assert sources == [f"nats:{names.prefix}.x{TITLE}", f"nats:{names.prefix}.\\xff\\xfe"]


def test_error_messages_are_escaped_and_redacted(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    async def failing(args: argparse.Namespace, db: str) -> int:
        raise ProjectorError(f"cannot store step {TITLE!s} via {db}\nDETAIL: \x9b2J")

    async def answers(url: str, *args: Any, **kwargs: Any) -> None:
        return None

    monkeypatch.setattr(project_commands, "rebuild_command", failing)
    monkeypatch.setattr(cli, "check_connection", answers)  # no server behind the URL
    url = "postgresql://app:hunter22@127.0.0.1:1/noetl"
    assert run(["--database-url", url, "rebuild"]) == 3
    err = capsys.readouterr().err
    assert err == (
        f"projector: error: cannot store step {SHOWN} via "
        "postgresql://app:***@127.0.0.1:1/noetl?connect_timeout=10 "
        "DETAIL: \\u009b2J\n"
    )


def test_status_history_and_executions_escape_producer_text(
    database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    execution_id = f"x{TITLE}"
    hostile = [
        event(
            execution_id,
            f"e{TITLE}",
            event_type="call.error",
            step="[link=https://evil.example]s[/link]\x1b[2J",
            status="FAILED",
            context={"error": "boom\x9b2J\u202e", "x": "\x7f"},
        )
    ]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.cursor().executemany(INSERT, rows(hostile))
    for command, shown in [
        (["status", execution_id], f"x{SHOWN}"),
        (["history", execution_id], f"e{SHOWN}"),
        (["executions"], f"x{SHOWN}"),
        (["status", execution_id, "--json"], f"x{SHOWN}"),
    ]:
        assert run(["--database-url", database_url, *command]) == 0
        out = capsys.readouterr().out
        assert not _raw_controls(out), (command, out)
        assert "\u202e" not in out
        assert shown in out, (command, out)
    assert run(["--database-url", database_url, "status", execution_id]) == 0
    out = capsys.readouterr().out
    assert "[link=https://evil.example]s[/link]\\u001b[2J" in out  # markup shown, not obeyed
    assert "boom\\u009b2J\\u202e" in out
    assert run(["--database-url", database_url, "status", execution_id, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # escaped, and still the same JSON
    assert doc["execution_id"] == execution_id
    assert doc["steps"][0]["error"] == "boom\x9b2J\u202e"
