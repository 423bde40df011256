"""`projector consume` as real processes: two sharing a consumer, SIGTERM, and kill -9."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import psycopg
import pytest

from projector import NatsEventSink
from tests.natsutil import Names, consume_argv, make_events, wait_for

pytestmark = [pytest.mark.nats, pytest.mark.slow]

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
BOUND = 120.0  # no process outlives a test by more than this


@contextlib.asynccontextmanager
async def bridge_process(argv: Sequence[str]) -> AsyncIterator[asyncio.subprocess.Process]:
    """A bridge subprocess that is always gone when the block ends."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def publish(nats_url: str, names: Names, events: list[Any]) -> None:
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        for start in range(0, len(events), 1000):
            await sink.emit_many(events[start : start + 1000])


async def stored(aconn: Conn) -> tuple[int, int]:
    cur = await aconn.execute(
        "SELECT count(*), count(DISTINCT (execution_id, event_id)) FROM noetl.event"
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def finish(proc: asyncio.subprocess.Process) -> tuple[int, dict[str, Any], str]:
    out, err = await asyncio.wait_for(proc.communicate(), BOUND)
    assert proc.returncode is not None
    summary = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
    return proc.returncode, summary, err.decode()


async def test_two_processes_split_the_work_and_store_each_event_once(
    nats_url: str, names: Names, database_url: str, aconn: Conn
) -> None:
    await publish(nats_url, names, make_events(6000))
    argv = consume_argv(database_url, nats_url, names, "--batch", "200", "--until-empty", "--json")
    async with bridge_process(argv) as one, bridge_process(argv) as two:
        (code1, sum1, err1), (code2, sum2, err2) = await asyncio.gather(finish(one), finish(two))
    assert (code1, code2) == (0, 0), err1 + err2
    assert sum1["stored"] + sum2["stored"] == 6000
    assert await stored(aconn) == (6000, 6000)


async def test_sigterm_finishes_in_flight_and_exits_zero(
    nats_url: str, names: Names, database_url: str, aconn: Conn, js: Any
) -> None:
    await publish(nats_url, names, make_events(20000))
    argv = consume_argv(database_url, nats_url, names, "--batch", "100", "--json")
    async with bridge_process(argv) as proc:

        async def started() -> bool:
            return (await stored(aconn))[0] > 0

        await wait_for(started, "the bridge to store something", limit=BOUND)
        proc.send_signal(signal.SIGTERM)
        code, summary, err = await finish(proc)
    assert code == 0, err
    info = await js.consumer_info(names.stream, names.durable)
    assert info.num_ack_pending == 0  # what was fetched was stored and acknowledged
    count, distinct = await stored(aconn)
    assert count == distinct == summary["stored"] == 20000 - info.num_pending
    assert set(summary) >= {"stored", "duplicates", "rejected", "redelivered", "pending"}


def victim_sessions_gone(aconn: Conn) -> Callable[[], Awaitable[bool]]:
    """A check: no session but `aconn`'s is connected to its database."""

    async def check() -> bool:
        cur = await aconn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        row = await cur.fetchone()
        return row is not None and row[0] == 0

    return check


async def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    nats_url: str, names: Names, database_url: str, aconn: Conn
) -> None:
    total = 20000
    await publish(nats_url, names, make_events(total))
    # A short ack wait so that the killed bridge's unacknowledged batch comes back quickly.
    argv = consume_argv(database_url, nats_url, names, "--batch", "100", "--ack-wait", "2")
    async with bridge_process(argv) as victim:

        async def midway() -> bool:
            return (await stored(aconn))[0] >= 1000

        await wait_for(midway, "the first bridge to be midway", limit=BOUND)
        victim.kill()  # SIGKILL: no chance to ack or clean up
        await asyncio.wait_for(victim.wait(), BOUND)
    assert victim.returncode == -signal.SIGKILL
    # A COMMIT the victim sent just before it died still completes on the server: count what
    # it stored once its sessions are gone.
    await wait_for(victim_sessions_gone(aconn), "the victim's sessions to end", limit=BOUND)
    by_victim = (await stored(aconn))[0]
    assert by_victim < total, "the bridge finished before it could be killed"
    async with bridge_process([*argv, "--until-empty", "--json"]) as survivor:
        code, summary, err = await finish(survivor)
    assert code == 0, err
    assert await stored(aconn) == (total, total)
    assert summary["stored"] == total - by_victim


async def test_a_drain_stopped_by_a_signal_exits_zero_after_a_rejection(
    nats_url: str, names: Names, database_url: str, aconn: Conn, js: Any
) -> None:
    """`consume --until-empty` that rejected a message but was stopped by SIGTERM before the
    stream was empty exits 0, as the service does (1 is for a drain that ran to the end)."""
    await js.publish(f"{names.prefix}.x", b'{"not": "an envelope"}')  # rejected, first in line
    await publish(nats_url, names, make_events(60000))  # seconds of work in batches of 50
    argv = consume_argv(database_url, nats_url, names, "--batch", "50", "--until-empty", "--json")
    async with bridge_process(argv) as proc:

        async def rejected() -> bool:
            cur = await aconn.execute("SELECT count(*) FROM noetl.event_rejected")
            row = await cur.fetchone()
            return row is not None and row[0] == 1

        await wait_for(rejected, "the bridge to reject the first message", limit=BOUND)
        proc.send_signal(signal.SIGTERM)
        code, summary, err = await finish(proc)
    assert summary["rejected"] == 1, err
    assert summary["stored"] < 60000, summary  # stopped, not drained
    assert code == 0, err
