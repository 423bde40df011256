"""NATS restarted or killed under `projector consume`; `consume` and `project` killed themselves.

Every process is real (`python -m projector ...`); every kill is SIGKILL, so nothing gets a chance
to acknowledge, roll back or clean up. After each test every key sent is stored exactly once and
the state tables equal the views.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Sequence

import pytest

from projector import ExecutorEvent, NatsEventSink, PostgresEventSink, ProjectorError
from tests.faults.harness import (
    assert_state_equals_views,
    assert_stored_exactly,
    cli_process,
    consume_process,
    in_thread,
    keys,
    projected_count,
    stored_count,
    workload,
)
from tests.faults.servers import NatsServer
from tests.natsutil import Names, unique_names, wait_for

pytestmark = pytest.mark.slow


async def publish(url: str, names: Names, events: Sequence[ExecutorEvent]) -> None:
    """Publish `events`, retrying while the server is coming back (re-publishing is safe)."""
    for attempt in range(100):
        try:
            async with NatsEventSink(
                url, stream=names.stream, subject_prefix=names.prefix, create_stream=True
            ) as sink:
                for start in range(0, len(events), 1000):
                    await sink.emit_many(events[start : start + 1000])
            return
        except ProjectorError:
            if attempt == 99:
                raise
            await asyncio.sleep(0.1)


async def at_least(url: str, n: int) -> None:
    async def reached() -> bool:
        return await stored_count(url) >= n

    await wait_for(reached, f"{n} stored events", limit=120)


@pytest.mark.parametrize("mode", ["stop", "kill9"])
async def test_consume_survives_nats(fault_db: str, own_nats: NatsServer, mode: str) -> None:
    names = unique_names()
    before, after = workload(500, "b"), workload(100, "a")
    await publish(own_nats.url, names, before)
    async with consume_process(fault_db, own_nats.url, names) as consume:
        await at_least(fault_db, 1000)
        assert await stored_count(fault_db) < len(before), "the bridge finished before the fault"
        await in_thread(own_nats.restart, mode)
        await publish(own_nats.url, names, after)  # the same bridge must take these too
        await at_least(fault_db, len(before) + len(after))
        assert consume.proc.returncode is None
        consume.proc.send_signal(signal.SIGTERM)
        assert await consume.finish() == 0, consume.err
    assert "reconnecting" in consume.err  # the bridge did lose its server
    await assert_stored_exactly(fault_db, keys(before + after))
    await assert_state_equals_views(fault_db)


async def test_kill_9_of_consume_again_and_again(fault_db: str, own_nats: NatsServer) -> None:
    names = unique_names()
    events = workload(700)
    await publish(own_nats.url, names, events)
    progress = 0
    for _ in range(3):
        async with consume_process(fault_db, own_nats.url, names) as victim:
            progress = await stored_count(fault_db) + 1500
            await at_least(fault_db, progress)
            await victim.kill9()
        assert victim.proc.returncode == -signal.SIGKILL
    assert await stored_count(fault_db) < len(events), "the bridges finished before the last kill"
    async with consume_process(
        fault_db, own_nats.url, names, "--until-empty", "--json"
    ) as survivor:
        assert await survivor.finish() == 0, survivor.err
    await assert_stored_exactly(fault_db, keys(events))
    await assert_state_equals_views(fault_db)


async def test_kill_9_of_project_while_events_arrive(fault_db: str) -> None:
    waves = [workload(300, f"w{n}.") for n in range(4)]
    async with PostgresEventSink(fault_db, batch_size=500) as sink:
        await sink.emit_many(waves[0])

        async def keep_writing() -> None:
            for wave in waves[1:]:
                await sink.emit_many(wave)
                await asyncio.sleep(0.2)

        writer = asyncio.create_task(keep_writing())
        for _ in range(3):
            # Small chunks: the kill lands inside a chunk's transaction, or between two.
            async with cli_process(
                fault_db, "project", "--max-events", "200", "--poll-interval", "0.1"
            ) as victim:
                seen = await projected_count(fault_db)

                async def progressed(seen: int = seen) -> bool:
                    return await projected_count(fault_db) > seen

                await wait_for(progressed, "the projector to project something")
                await victim.kill9()
            assert victim.proc.returncode == -signal.SIGKILL
        await writer
    assert await projected_count(fault_db) < 1200, "the projector caught up before the last kill"
    await assert_stored_exactly(fault_db, keys([e for wave in waves for e in wave]))
    await assert_state_equals_views(fault_db)
