"""What every fault test uses: traffic with known keys, the CLI as a real process, the checks.

The checks are the suite's definition of "nothing lost, nothing duplicated, status exact":
:func:`assert_stored_exactly` compares the keys sent with the rows of ``noetl.event`` (every key
once, no other key), and :func:`assert_state_equals_views` runs ``projector project --once`` as a
process and compares ``noetl.step_state`` / ``noetl.execution_state`` with ``noetl.step_status``
/ ``noetl.execution_status`` row for row.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from projector import ExecutorEvent
from tests.eventlog import read_executions, read_steps
from tests.natsutil import Names, consume_argv

Key = tuple[str, str]
Conn = psycopg.AsyncConnection[tuple[Any, ...]]

#: No process or wait of the suite outlives this many seconds (a hang fails the test).
BOUND = 120.0


def execution_events(
    execution_id: str, at: datetime, steps: int = 4, fails: bool = False
) -> list[ExecutorEvent]:
    """One small noetl-like execution, every event with an explicit id (``0``, ``1``, ...).

    It starts, runs `steps` steps (with `fails`, the last one fails once and is retried; the late
    ``command.completed`` RUNNING arrives after ``step.exit``) and ends.
    """
    shape: list[tuple[str, str, str, dict[str, Any]]] = [
        ("playbook.initialized", "pb", "initialized", {})
    ]
    for s in range(steps):
        step = f"step{s}"
        shape.append(("step.enter", step, "RUNNING", {}))
        if fails and s == steps - 1:
            shape.append(("call.error", step, "FAILED", {"error": "boom", "attempt": 1}))
            shape.append(("step.enter", step, "RUNNING", {"attempt": 2}))
        shape.append(("step.exit", step, "COMPLETED", {}))
        shape.append(("command.completed", step, "RUNNING", {}))
    shape.append(("playbook.completed", "pb", "completed", {}))
    return [
        ExecutorEvent(
            execution_id=execution_id,
            event_id=str(seq),
            event_type=event_type,
            step=step,
            status=status,
            created_at=at + timedelta(milliseconds=seq),
            context=context or {"seq": seq},
        )
        for seq, (event_type, step, status, context) in enumerate(shape)
    ]


def workload(executions: int, prefix: str = "x", steps: int = 4) -> list[ExecutorEvent]:
    """The events of `executions` executions ``<prefix>0`` .. (every third one fails once)."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    out: list[ExecutorEvent] = []
    for x in range(executions):
        out += execution_events(f"{prefix}{x}", base + timedelta(seconds=x), steps, x % 3 == 0)
    return out


def keys(events: Iterable[ExecutorEvent]) -> set[Key]:
    """The stored keys of `events`."""
    return {(e.execution_id, e.resolved_event_id()) for e in events}


async def stored_counts(url: str) -> Counter[Key]:
    """How many rows of noetl.event each key has."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT execution_id, event_id FROM noetl.event")
        return Counter((str(r[0]), str(r[1])) for r in await cur.fetchall())


async def count_rows(url: str, relation: str = "noetl.event") -> int:
    """Rows in `relation` (trusted text), 0 while the database cannot be reached."""
    try:
        async with await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=2
        ) as conn:
            cur = await conn.execute(f"SELECT count(*) FROM {relation}")
            row = await cur.fetchone()
            return int(row[0]) if row else 0
    except psycopg.OperationalError:
        return 0


async def stored_count(url: str) -> int:
    """Rows in noetl.event (0 while the database cannot be reached)."""
    return await count_rows(url)


async def projected_count(url: str) -> int:
    """Rows in noetl.execution_state (0 while the database cannot be reached)."""
    return await count_rows(url, "noetl.execution_state")


async def assert_stored_exactly(url: str, sent: Iterable[Key]) -> None:
    """Every key sent is stored exactly once, and nothing else is stored."""
    expected = set(sent)
    counts = await stored_counts(url)
    lost = expected - counts.keys()
    extra = counts.keys() - expected
    duplicated = {k: n for k, n in counts.items() if n > 1}
    assert not lost, f"{len(lost)} keys lost, e.g. {sorted(lost)[:5]}"
    assert not duplicated, f"{len(duplicated)} keys duplicated, e.g. {list(duplicated.items())[:5]}"
    assert not extra, f"{len(extra)} keys stored that were never sent, e.g. {sorted(extra)[:5]}"


async def assert_state_equals_views(url: str) -> None:
    """After `projector project --once` (a process), the state tables equal the exact views."""
    code, _, err = await run_cli(url, "project", "--once")
    assert code == 0, err
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        steps = await read_steps(conn, "noetl.step_status")
        executions = await read_executions(conn, "noetl.execution_status")
        assert steps, "no steps: the test stored nothing"
        assert await read_steps(conn, "noetl.step_state") == steps
        assert await read_executions(conn, "noetl.execution_state") == executions


def cli_env() -> dict[str, str]:
    """The environment of a CLI process: ours without PROJECTOR_* settings (options say all)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PROJECTOR_")}


def cli_argv(url: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "projector", "--database-url", url, *args]


async def run_cli(url: str, *args: str) -> tuple[int, str, str]:
    """Run `projector <args>` to its end; (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *cli_argv(url, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=cli_env(),
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    except TimeoutError:
        proc.kill()
        await proc.communicate()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclass
class Running:
    """A CLI process started by :func:`cli_process`; `finish()` waits for it and reads output."""

    proc: asyncio.subprocess.Process
    out: str = ""
    err: str = ""

    async def finish(self, limit: float = BOUND) -> int:
        out, err = await asyncio.wait_for(self.proc.communicate(), limit)
        self.out, self.err = out.decode(), err.decode()
        assert self.proc.returncode is not None
        return self.proc.returncode

    async def kill9(self) -> None:
        self.proc.kill()
        await self.finish()


@contextlib.asynccontextmanager
async def process(argv: Sequence[str]) -> AsyncIterator[Running]:
    """`argv` as a background process that is always gone when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env()
    )
    running = Running(proc)
    try:
        yield running
    finally:
        if proc.returncode is None:
            proc.kill()
            with contextlib.suppress(Exception):
                await running.finish()


def cli_process(url: str, *args: str) -> contextlib.AbstractAsyncContextManager[Running]:
    """`projector --database-url URL <args>` as a background process (see :func:`process`)."""
    return process(cli_argv(url, *args))


#: Bridge options of the fault tests: small batches, and a short ack wait so that what a killed
#: bridge held unacknowledged comes back quickly.
BRIDGE_OPTIONS = ("--batch", "100", "--ack-wait", "2", "--log-interval", "0")


def consume_process(
    url: str, nats_url: str, names: Names, *extra: str
) -> contextlib.AbstractAsyncContextManager[Running]:
    """`projector consume` for this test's stream, with :data:`BRIDGE_OPTIONS` and `extra`."""
    return process(consume_argv(url, nats_url, names, *BRIDGE_OPTIONS, *extra))


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking server operation (start, kill, restart) without stopping the event loop."""
    return await asyncio.to_thread(fn, *args)
