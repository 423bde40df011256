"""`projector watch` as a subprocess: woken by the sink's NOTIFY, plain snapshots when stdout is
not a terminal, exits 0 when the execution is terminal."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from projector.envelope import ExecutorEvent
from projector.pgsink import PostgresEventSink

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def event(n: int, event_type: str, step: str, status: str) -> ExecutorEvent:
    return ExecutorEvent(
        execution_id="watched",
        event_id=f"w{n}",
        event_type=event_type,
        step=step,
        status=status,
        created_at=START + timedelta(seconds=n),
    )


async def read_snapshot(stream: asyncio.StreamReader) -> str:
    """The next snapshot: the lines from one `--- ` separator up to the legend."""
    lines = []
    while True:
        raw = await asyncio.wait_for(stream.readline(), timeout=60)
        if not raw:
            raise AssertionError(f"watch ended in the middle of a snapshot: {lines}")
        line = raw.decode("utf-8")
        lines.append(line)
        if line.startswith("█ completed"):
            return "".join(lines)


async def start_watch(database_url: str, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "projector",
        "watch",
        "watched",
        *args,
        env={**os.environ, "PROJECTOR_DATABASE_URL": database_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_watch_redraws_on_events_and_exits_when_terminal(database_url: str) -> None:
    async with PostgresEventSink(database_url) as sink:
        await sink.emit(event(0, "playbook.initialized", "demo/watch", "initialized"))
        await sink.emit(event(1, "step.enter", "load", "RUNNING"))
        # A long polling interval: only the sink's NOTIFY can wake it in the time the test waits.
        proc = await start_watch(database_url, "--interval", "3600")
        assert proc.stdout is not None and proc.stderr is not None
        try:
            first = await read_snapshot(proc.stdout)
            assert first.startswith("--- ") and "execution watched  RUNNING" in first
            assert "load" in first and "▒" in first  # the open unit, drawn as running
            await sink.emit(event(2, "step.exit", "load", "COMPLETED"))
            second = await read_snapshot(proc.stdout)
            load = next(line for line in second.splitlines() if line.startswith("load"))
            assert "COMPLETED" in load and "█" in load
            await sink.emit(event(3, "step.enter", "save", "RUNNING"))
            third = await read_snapshot(proc.stdout)
            assert any(line.startswith("save ") for line in third.splitlines())
            await sink.emit(event(4, "step.exit", "save", "COMPLETED"))
            await sink.emit(event(5, "playbook.completed", "demo/watch", "COMPLETED"))
            last = ""
            while "execution watched  COMPLETED" not in last:
                last = await read_snapshot(proc.stdout)
            code = await asyncio.wait_for(proc.wait(), timeout=60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        err = await proc.stderr.read()
        assert code == 0, err
        assert await proc.stdout.read() == b""  # nothing after the terminal snapshot


async def test_watch_of_a_terminal_execution_prints_once_and_exits(database_url: str) -> None:
    async with PostgresEventSink(database_url) as sink:
        await sink.emit(event(0, "step.enter", "only", "RUNNING"))
        await sink.emit(event(1, "step.exit", "only", "COMPLETED"))
        await sink.emit(event(2, "playbook.completed", "", "COMPLETED"))
    proc = await start_watch(database_url)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err
    assert out.decode().count("--- ") == 1 and "COMPLETED" in out.decode()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [(["--interval", "0"], 2, "more than 0"), ([], 1, "no events are stored")],
)
async def test_watch_bad_input(database_url: str, args: list[str], code: int, message: str) -> None:
    proc = await start_watch(database_url, *args)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == code
    assert message in err.decode()


def _read_until(fd: int, marker: bytes, proc: subprocess.Popen[bytes]) -> bytes:
    seen = b""
    deadline = time.monotonic() + 60
    while marker not in seen:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise AssertionError(f"no {marker!r} on the terminal: {seen[-2000:]!r}")
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen += os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
    return seen


@pytest.mark.parametrize("stop", ["q", "ctrl-c"])
def test_on_a_terminal_it_draws_live_and_stops_on_q_or_ctrl_c(database_url: str, stop: str) -> None:
    async def store() -> None:
        async with PostgresEventSink(database_url) as sink:
            await sink.emit(event(0, "step.enter", "load", "RUNNING"))

    asyncio.run(store())
    main, child = pty.openpty()
    env = {**os.environ, "PROJECTOR_DATABASE_URL": database_url, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "projector", "watch", "watched", "--interval", "3600"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        start_new_session=True,
    )
    os.close(child)
    try:
        screen = _read_until(main, b"q or Ctrl-C to stop", proc)
        assert b"execution" in screen and b"watched" in screen and b"load" in screen
        if stop == "q":
            os.write(main, b"q")
        else:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
