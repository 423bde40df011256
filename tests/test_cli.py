"""The command line, run in-process (`projector.cli.run`) and once as a real subprocess."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from projector.cli import run


def q(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = (
    '{"execution_id":"e1","event_id":"%d","event_type":"step.enter","step":"a",'
    '"status":"RUNNING","created_at":"2026-11-20T10:00:0%dZ","context":{}}'
)


def test_ingest_reports_bad_lines_and_stores_the_rest(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(
        tmp_path / "events.ndjson",
        [GOOD % (1, 1), "", '{"execution_id":"e1"}', "not json", GOOD % (2, 2)],
    )
    status = run(["--database-url", database_url, "ingest", str(path), "--json"])
    out, err = capsys.readouterr()
    assert status == 1
    assert json.loads(out) == {"inserted": 2, "duplicates": 0, "conflicts": 0, "rejected": 2}
    assert f"{path}:line 3: rejected:" in err and "event_type" in err
    assert (
        f"{path}:line 5: rejected:" not in err and f"{path}:line 4: rejected: Invalid JSON" in err
    )
    assert q(database_url, "SELECT count(*) FROM noetl.event") == [(2,)]
    assert q(database_url, "SELECT position, source FROM noetl.event_rejected ORDER BY id") == [
        (3, str(path)),
        (4, str(path)),
    ]
    # Ingesting again stores nothing new and, with nothing rejected, exits 0.
    clean = write_lines(tmp_path / "clean.ndjson", [GOOD % (1, 1), GOOD % (2, 2)])
    assert run(["--database-url", database_url, "ingest", str(clean), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["duplicates"] == 2


def test_ingest_json_array_and_conflicts(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    array = tmp_path / "events.json"
    array.write_text("[" + GOOD % (1, 1) + "," + GOOD % (2, 2) + ", 5]")
    assert run(["--database-url", database_url, "ingest", str(array)]) == 1
    out, err = capsys.readouterr()
    assert "2 inserted" in out and f"{array}:element 3: rejected" in err
    conflicting = write_lines(tmp_path / "c.ndjson", [(GOOD % (1, 1)).replace("RUNNING", "FAILED")])
    assert run(["--database-url", database_url, "ingest", str(conflicting), "--json"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out)["conflicts"] == 1 and "conflict: event '1'" in err


def test_db_commands(empty_database_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    url = empty_database_url
    assert run(["--database-url", url, "db", "current"]) == 1
    assert "run `projector db upgrade`" in capsys.readouterr().out
    assert run(["--database-url", url, "ingest", "-"]) == 3  # schema missing: environment error
    assert "projector db upgrade" in capsys.readouterr().err
    assert run(["--database-url", url, "db", "upgrade"]) == 0
    assert run(["--database-url", url, "db", "current"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert run(["--database-url", url, "db", "partitions", "--ahead", "12"]) == 0
    assert "created" in capsys.readouterr().out
    # The option is also accepted after the subcommand.
    assert run(["db", "current", "--database-url", url]) == 0


def test_demo_runs_twice_as_a_real_process(database_url: str) -> None:
    cmd = [sys.executable, "-m", "projector", "--database-url", database_url, "demo"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "39 inserted" in first.stdout and "demo-failed" in first.stdout
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert second.returncode == 0, second.stderr
    assert "39 duplicates" in second.stdout
    assert q(database_url, "SELECT count(DISTINCT execution_id) FROM noetl.event") == [(3,)]


def test_ingest_reads_stdin(database_url: str) -> None:
    lines = "\n".join([GOOD % (1, 1), GOOD % (2, 2)]) + "\n"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "projector",
            "--database-url",
            database_url,
            "ingest",
            "-",
            "--json",
        ],
        input=lines,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["inserted"] == 2


def test_a_malformed_environment_setting_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PROJECTOR_CONNECT_TIMEOUT", "abc")
    assert run(["--help"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("projector: error: bad environment setting: PROJECTOR_CONNECT_TIMEOUT:")
    assert "Traceback" not in err


def test_global_options_work_before_or_after_the_command(
    database_url: str, closed_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (
        ["-v", "--database-url", database_url, "db", "current"],
        ["db", "current", "-v", "--database-url", database_url],
        ["db", "-v", "current", "--connect-timeout", "3", "--database-url", database_url],
        # The value after the command wins over the one before it.
        ["--database-url", closed_url, "db", "current", "--database-url", database_url],
    ):
        assert run(argv) == 0, argv
        assert "up to date" in capsys.readouterr().out


def test_every_subcommand_lists_the_global_options_in_its_help() -> None:
    from projector.cli import _subparsers, build_parser

    subparsers = _subparsers(build_parser())
    assert len(subparsers) >= 15
    for sub in subparsers:
        text = sub.format_help()
        for option in ("--database-url URL", "--connect-timeout SECONDS", "-v, --verbose"):
            assert option in text, (sub.prog, option)


def test_every_subcommand_teaches_its_exit_status_under_its_examples() -> None:
    """The exit-status line used to be left out of every help with an example (status,
    history, executions, timeline, watch, serve, db retention); psql's status is psql's."""
    from projector.cli import _subparsers, build_parser

    for sub in _subparsers(build_parser()):
        text = " ".join(sub.format_help().split())
        has_exit_help = "Exit status: 0 ok, 1 rejected/conflicting data (ingest, consume" in text
        assert has_exit_help == (sub.prog != "projector psql"), sub.prog
        if "example" in text and has_exit_help:
            assert text.index("example") < text.index("Exit status"), sub.prog
    current = {sub.prog: sub for sub in _subparsers(build_parser())}["projector db current"]
    assert "exit 1 when the database is not at head" in " ".join(current.format_help().split())


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import projector

    assert run(["--version"]) == 0
    assert capsys.readouterr().out == f"projector {projector.__version__}\n"


async def test_db_upgrade_waits_for_a_server_that_comes_up_late(
    empty_database_url: str, server_url: str
) -> None:
    from projector import migrate
    from tests.pgservers import LateProxy

    proxy = LateProxy(server_url)
    url = proxy.url(empty_database_url)
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "projector", "-v", "--database-url", url],
        *["db", "upgrade", "--wait", "120"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        # Nothing listens yet: the command says it waits, and keeps trying.
        while b"waiting up to 120 s for PostgreSQL" not in (line := await proc.stderr.readline()):
            assert line, "db upgrade --wait ended without waiting"
        assert b"Connection refused" in line
        assert proc.returncode is None
        await proxy.start()
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await proxy.close()
    assert proc.returncode == 0, err.decode()
    assert f"database is at revision {migrate.head()}" in out.decode()
    assert await asyncio.to_thread(migrate.current, empty_database_url) == migrate.head()


def test_db_upgrade_wait_gives_up_with_the_last_reason(
    closed_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    assert run(["--database-url", closed_url, "db", "upgrade", "--wait", "0.5"]) == 3
    err = capfd.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("projector: error: cannot connect to PostgreSQL")
    assert "Connection refused" in last and "still failing after 0.5 s" in last
