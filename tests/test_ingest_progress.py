"""`projector ingest` on a terminal: the progress bar counts events, and Ctrl-C says what was
committed. Real processes: one on a pseudo-terminal, one interrupted with SIGINT."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

from projector.cli.ingest_commands import PROGRESS_MIN_BYTES

Conn = psycopg.AsyncConnection[Any]


def line(n: int) -> str:
    return (
        f'{{"execution_id":"p1","event_id":"{n}","event_type":"command.completed","step":"s",'
        f'"status":"COMPLETED","created_at":"2026-11-20T10:00:00Z","context":{{"n":{n}}}}}\n'
    )


async def stored(aconn: Conn) -> int:
    cur = await aconn.execute("SELECT count(*) FROM noetl.event")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def test_ctrl_c_says_what_was_committed(aconn: Conn, database_url: str) -> None:
    argv = ["--database-url", database_url, "ingest", "-", "--batch-size", "10"]
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "projector", *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write("".join(line(n) for n in range(25)).encode())
        await proc.stdin.drain()
        for _ in range(2400):  # two batches committed; the third waits for more input
            if await stored(aconn) >= 20:
                break
            await asyncio.sleep(0.025)
        assert await stored(aconn) >= 20
        proc.send_signal(signal.SIGINT)
        proc.stdin.close()
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = err.decode()
    assert proc.returncode == 130, text
    found = re.search(
        r"stdin: interrupted after (\d+) events committed \((\d+) inserted, 0 dup", text
    )
    assert found is not None, text
    committed = int(found.group(1))
    assert committed == int(found.group(2)) and committed in (10, 20, 25)
    assert committed <= await stored(aconn) <= 25
    assert "the batch in flight may or may not be stored" in text
    assert text.rstrip().endswith("projector: interrupted")
    assert out == b""  # no summary of a run that did not finish


def test_the_progress_bar_counts_events(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    body = "".join(line(n) for n in range(PROGRESS_MIN_BYTES // 150 + 1000))
    path.write_text(body)
    assert path.stat().st_size >= PROGRESS_MIN_BYTES
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "projector",
                "--database-url",
                database_url,
                "ingest",
                str(path),
            ],
            stdout=subprocess.PIPE,
            stderr=secondary,
            env={**os.environ, "COLUMNS": "160", "TERM": "xterm"},
        )
        os.close(secondary)
        screen = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            screen += chunk
        out, _ = proc.communicate(timeout=120)
    finally:
        os.close(primary)
    assert proc.returncode == 0
    events = body.count("\n")
    assert out.decode() == f"{events} inserted, 0 duplicates, 0 conflicts, 0 rejected\n"
    shown = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", screen).decode(errors="replace")
    assert re.search(r"[\d,]+ events  [\d,]+/s  inserted [\d,]+  duplicates 0", shown), shown
    assert "MB" not in shown and "kB" not in shown  # no byte counts


def test_no_progress_bar_without_a_terminal(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "big.ndjson"
    path.write_text("".join(line(n) for n in range(PROGRESS_MIN_BYTES // 150 + 1000)))
    done = subprocess.run(
        [sys.executable, "-m", "projector", "--database-url", database_url, "ingest", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert done.stderr == ""
