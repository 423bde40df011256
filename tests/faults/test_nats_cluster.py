"""A JetStream cluster of three `nats-server`s, a stream with three replicas, one node killed.

A publisher (connected to the first node) keeps publishing and `projector consume` (connected to
the second) keeps storing while one node is killed with SIGKILL: the stream's leader, or the node
the bridge is connected to. The publisher re-publishes what was not acknowledged (safe: JetStream
and the sink both drop repeats); every event is stored exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
from collections.abc import Iterator, Sequence

import nats
import pytest

from projector import ExecutorEvent, NatsEventSink, ProjectorError
from projector.jetstream import StreamLimits
from tests.faults.harness import (
    assert_state_equals_views,
    assert_stored_exactly,
    consume_process,
    in_thread,
    keys,
    stored_count,
    workload,
)
from tests.faults.servers import NatsServer, nats_cluster
from tests.natsutil import Names, unique_names, wait_for

pytestmark = pytest.mark.slow

#: Seconds the cluster gets to elect a meta leader and create the stream.
FORMING = 60.0


@pytest.fixture
def cluster() -> Iterator[list[NatsServer]]:
    with nats_cluster(3) as servers:
        yield servers


async def create_replicated_stream(url: str, names: Names) -> None:
    """The documented stream, with three replicas, once the cluster can hold it."""
    config = dataclasses.replace(
        StreamLimits().config(names.stream, [f"{names.prefix}.>"]), num_replicas=3
    )
    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=2)
        deadline = time.monotonic() + FORMING
        while True:
            try:
                await js.add_stream(config)
                return
            except Exception:  # no JetStream meta leader yet: the cluster is still forming
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await nc.close()


async def stream_leader(url: str, names: Names) -> str:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream(timeout=5).stream_info(names.stream)
        leader: str = info.cluster.leader
        return leader
    finally:
        await nc.close()


async def publish_through_faults(
    url: str,
    names: Names,
    events: Sequence[ExecutorEvent],
    acked: list[int],
    go_on: asyncio.Event,
) -> None:
    """Publish `events` in chunks, re-publishing a chunk until JetStream acknowledged all of it.

    The first quarter goes out at once; the rest, at a steady pace, once `go_on` is set.
    """
    chunk = 100
    start = 0
    # One connection throughout: when its node dies, nats-py reconnects to the servers the
    # cluster told it about (a new connection could only try the one URL it is given).
    async with NatsEventSink(url, stream=names.stream, subject_prefix=names.prefix) as sink:
        while start < len(events):
            if start >= len(events) // 4:
                await go_on.wait()
                await asyncio.sleep(0.03)
            try:
                await sink.emit_many(events[start : start + chunk])
            except ProjectorError:
                await asyncio.sleep(0.2)
                continue
            start += chunk
            acked[0] = start


@pytest.mark.parametrize("victim", ["stream leader", "the bridge's server"])
async def test_node_killed_mid_stream_loses_nothing(
    cluster: list[NatsServer], fault_db: str, victim: str
) -> None:
    publisher_node, bridge_node = cluster[0], cluster[1]
    names = unique_names()
    await create_replicated_stream(publisher_node.url, names)
    events = workload(700)
    acked = [0]
    go_on = asyncio.Event()
    publisher = asyncio.create_task(
        publish_through_faults(publisher_node.url, names, events, acked, go_on)
    )
    async with consume_process(fault_db, bridge_node.url, names) as consume:

        async def midway() -> bool:
            return await stored_count(fault_db) >= 2000

        await wait_for(midway, "the bridge to store the first events")
        go_on.set()
        await asyncio.sleep(0.3)  # the publisher is in full swing when the node dies
        assert not publisher.done(), "the publisher finished before the fault"
        if victim == "stream leader":
            name = await stream_leader(bridge_node.url, names)
            node = next(s for s in cluster if s.name == name)
        else:
            node = bridge_node
        await in_thread(node.kill9)
        await asyncio.wait_for(publisher, 120)
        assert acked[0] >= len(events)

        async def all_stored() -> bool:
            return await stored_count(fault_db) >= len(events)

        await wait_for(all_stored, "every event to be stored", limit=120)
        assert consume.proc.returncode is None
        consume.proc.send_signal(signal.SIGTERM)
        assert await consume.finish() == 0, consume.err
    await assert_stored_exactly(fault_db, keys(events))
    await assert_state_equals_views(fault_db)
