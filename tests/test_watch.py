"""`projector watch` as a subprocess: woken by the sink's NOTIFY, plain snapshots when stdout is
not a terminal, exits 0 when the execution is terminal."""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pty
import select
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from projector.envelope import ExecutorEvent
from projector.pgsink import PostgresEventSink
from tests.eventlog import insert_events

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


async def test_watch_polls_when_no_notify_comes(database_url: str) -> None:
    # Rows written without the sink (no NOTIFY, as from a restore or another writer) are seen
    # by the polling fallback, every --interval seconds.
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await insert_events(conn, [event(0, "step.enter", "load", "RUNNING")])
        proc = await start_watch(database_url, "--interval", "0.2")
        assert proc.stdout is not None and proc.stderr is not None
        try:
            first = await read_snapshot(proc.stdout)
            assert "load" in first and "save" not in first
            await insert_events(conn, [event(1, "step.enter", "save", "RUNNING")])
            while "save" not in (snapshot := await read_snapshot(proc.stdout)):
                pass
            assert any(line.startswith("save ") for line in snapshot.splitlines())
            await insert_events(conn, [event(2, "playbook.completed", "", "COMPLETED")])
            code = await asyncio.wait_for(proc.wait(), timeout=60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert code == 0, await proc.stderr.read()


async def test_reloads_are_at_most_four_a_second_however_often_it_is_woken(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A clock of its own: every wake-up comes at once (a burst of NOTIFYs), and the loop sleeps
    # what is left of its quarter second before each reload; no real time is measured.
    from projector.cli import view_commands

    now = [1000.0]
    loads: list[float] = []

    async def no_wait(listener: object, interval: float, stop: asyncio.Event) -> None:
        now[0] += 0.01

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    class Execution:
        execution_id = "watched"

    class Tl:
        terminal = False
        execution = Execution()

    async def load(conn: object, execution_id: str) -> Tl:
        loads.append(now[0])
        return Tl()

    monkeypatch.setattr(view_commands.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(view_commands, "_wake", no_wait)
    monkeypatch.setattr(view_commands.asyncio, "sleep", sleep)
    monkeypatch.setattr(view_commands.timeline_model, "load", load)
    args = argparse.Namespace(follow=True, interval=1.0)
    changes = view_commands._changes(args, None, None, Tl(), asyncio.Event())  # type: ignore[arg-type]
    for _ in range(20):
        await anext(changes)
    await changes.aclose()
    gaps = [b - a for a, b in itertools.pairwise(loads)]
    assert len(loads) == 20 and min(gaps) >= 1 / view_commands.MAX_RELOADS_PER_SECOND - 1e-9
    assert view_commands.MAX_RELOADS_PER_SECOND == 4


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
