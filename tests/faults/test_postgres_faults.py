"""PostgreSQL killed (``kill -9`` of the postmaster) or restarted (fast shutdown) under load.

Under `emit_many`, under 200 concurrent `emit()` callers, under `projector project` and under
`projector consume`: every key sent is stored exactly once, and after `projector project --once`
the state tables equal the views. The server is the suite's own (see `servers.py`).
"""

from __future__ import annotations

import asyncio
import logging
import signal

import pytest

from projector import NatsEventSink, PostgresEventSink
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
from tests.faults.servers import NatsServer, PgServer
from tests.natsutil import unique_names, wait_for

pytestmark = pytest.mark.slow

MODES = ["kill9", "fast"]


@pytest.mark.parametrize("mode", MODES)
async def test_emit_many_survives_postgres(
    pg: PgServer, fault_db: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    events = workload(1200)
    caplog.set_level(logging.WARNING, logger="projector.pgsink")
    async with PostgresEventSink(fault_db, batch_size=250, retry_for=60) as sink:
        writer = asyncio.create_task(sink.emit_many(events))

        async def started() -> bool:
            return await stored_count(fault_db) > 0

        await wait_for(started, "the first batches to be stored")
        assert not writer.done(), "emit_many finished before the fault"
        await in_thread(pg.restart, mode)
        result = await writer
    assert "retrying" in caplog.text  # the fault really reached the sink
    # Exactly-once accounting too: a batch whose COMMIT reply was lost counts as inserted.
    assert (result.inserted, result.duplicates, result.conflicts) == (len(events), 0, 0)
    assert not result.rejected
    await assert_stored_exactly(fault_db, keys(events))
    await assert_state_equals_views(fault_db)


@pytest.mark.parametrize("mode", MODES)
async def test_200_concurrent_emits_survive_postgres(
    pg: PgServer, fault_db: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    # 200 producers, each sending its own execution's events one emit() at a time.
    events = workload(200, steps=6)
    by_execution: dict[str, list[object]] = {}
    for event in events:
        by_execution.setdefault(event.execution_id, []).append(event)
    assert len(by_execution) == 200
    outcomes: list[str] = []
    halfway = asyncio.Event()
    caplog.set_level(logging.WARNING, logger="projector.pgsink")

    async with PostgresEventSink(fault_db, retry_for=60) as sink:

        async def producer(own: list[object]) -> None:
            for n, event in enumerate(own):
                if n == len(own) // 2:
                    halfway.set()
                outcomes.append(await sink.emit(event))  # type: ignore[arg-type]

        producers = asyncio.gather(*(producer(own) for own in by_execution.values()))
        await halfway.wait()

        async def some_stored() -> bool:
            return await stored_count(fault_db) > 200

        await wait_for(some_stored, "the first group commits")
        assert not producers.done(), "the producers finished before the fault"
        await in_thread(pg.restart, mode)
        await producers
    assert "retrying" in caplog.text  # the fault really reached the group commit
    # Every caller was told its event is stored, and none that it was there already.
    assert outcomes.count("inserted") == len(events)
    await assert_stored_exactly(fault_db, keys(events))
    await assert_state_equals_views(fault_db)


@pytest.mark.parametrize("mode", MODES)
async def test_project_survives_postgres(pg: PgServer, fault_db: str, mode: str) -> None:
    first, backlog, after = workload(50, "a"), workload(600, "b"), workload(50, "c")
    async with PostgresEventSink(fault_db) as sink:
        await sink.emit_many(first)
        async with cli_process(
            fault_db, "project", "--poll-interval", "0.2", "--max-events", "500"
        ) as project:

            async def first_projected() -> bool:
                return await projected_count(fault_db) == 50

            await wait_for(first_projected, "the projector to catch up on the first events")
            await sink.emit_many(backlog)  # the projector works through it in chunks of 500

            async def busy() -> bool:
                return await projected_count(fault_db) > 50

            await wait_for(busy, "the projector to start on the backlog")
            await in_thread(pg.restart, mode)
            await sink.emit_many(after)

            async def all_projected() -> bool:
                return await projected_count(fault_db) == 700

            # The same process reconnects and projects what came before and after the fault.
            await wait_for(all_projected, "the projector to recover and catch up")
            assert project.proc.returncode is None
            project.proc.send_signal(signal.SIGTERM)
            assert await project.finish() == 0, project.err
    assert "retrying" in project.err  # the fault reached the projector, which retried
    await assert_stored_exactly(fault_db, keys(first + backlog + after))
    await assert_state_equals_views(fault_db)


@pytest.mark.parametrize("mode", MODES)
async def test_consume_survives_postgres(
    pg: PgServer, fault_db: str, own_nats: NatsServer, mode: str
) -> None:
    names = unique_names()
    events = workload(600)
    async with NatsEventSink(
        own_nats.url, stream=names.stream, subject_prefix=names.prefix, create_stream=True
    ) as publisher:
        for start in range(0, len(events), 1000):
            await publisher.emit_many(events[start : start + 1000])
    # --db-retry-for shorter than the outage at times: then the bridge naks and backs off.
    extra = ("--ack-wait", "5", "--db-retry-for", "1", "--until-empty", "--json")
    async with consume_process(fault_db, own_nats.url, names, *extra) as consume:

        async def midway() -> bool:
            return await stored_count(fault_db) >= 1000

        await wait_for(midway, "the bridge to store the first batches")
        assert consume.proc.returncode is None, "the bridge finished before the fault"
        await in_thread(pg.restart, mode)
        assert await consume.finish() == 0, consume.err
    assert "retrying" in consume.err  # the fault reached the bridge's sink, which retried
    await assert_stored_exactly(fault_db, keys(events))
    await assert_state_equals_views(fault_db)
