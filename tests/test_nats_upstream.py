"""The bridge on upstream noetl's NATS stream as it is (issue 10): limits retention, per-tenant
subjects, no `Nats-Msg-Id`, messages carrying one or many events; and what `projector nats init`
creates lets upstream's per-shard consumers read beside the bridge."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from nats.js import api

from projector.bridge import Bridge, BridgeConfig
from projector.jetstream import ensure_stream
from tests.natsutil import Names, unique_names

pytestmark = pytest.mark.nats

EXECUTION = 606790043104968712


def row(event_id: int | None, event_type: str, **extra: Any) -> dict[str, Any]:
    """An envelope as upstream's Python publisher writes it (integer ids, naive timestamp)."""
    out: dict[str, Any] = {
        "execution_id": EXECUTION,
        "event_type": event_type,
        "node_name": "fetch",
        "status": "RUNNING",
        "created_at": "2026-04-17 05:03:30.014899",
        **extra,
    }
    if event_id is not None:
        out["event_id"] = event_id
    return out


def config(nats_url: str, names: Names) -> BridgeConfig:
    return BridgeConfig(
        nats_url=nats_url,
        stream=names.stream,
        subject_prefix=names.prefix,
        durable=names.durable,
        until_empty=True,
        log_interval=0,
    )


@pytest.fixture
async def upstream(nats_url: str, js: Any) -> Any:
    """A stream made the way upstream's publisher makes NOETL_EVENTS (not by `nats init`)."""
    names = unique_names()
    await js.add_stream(
        api.StreamConfig(
            name=names.stream,
            subjects=[f"{names.prefix}.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            max_age=86400,
        )
    )
    try:
        yield names
    finally:
        await js.delete_stream(names.stream)


async def test_the_bridge_reads_upstreams_stream_as_it_is(
    upstream: Names, nats_url: str, database_url: str, js: Any
) -> None:
    subject = f"{upstream.prefix}.acme.ops.{EXECUTION}.3"  # <tenant>.<org>.<execution_id>.<shard>
    fanout = row(None, "command.issued", status="PENDING")
    payloads = [
        json.dumps(row(1, "step.enter")),  # a bare envelope
        json.dumps({"events": [fanout, fanout, row(3, "call.done", created_at="1776402209")]}),
        json.dumps({"event": row(4, "step.exit", status="COMPLETED")}),
        json.dumps({"events": []}),
    ]
    for payload in payloads:
        await js.publish(subject, payload.encode())  # no Nats-Msg-Id, as upstream
    before = (await js.stream_info(upstream.stream)).config
    stats = await Bridge(database_url, config(nats_url, upstream)).run()
    assert (stats.stored, stats.rejected, stats.pending, stats.ack_pending) == (4, 1, 0, 0)
    with psycopg.connect(database_url) as conn:
        stored = conn.execute(
            "SELECT event_type, count(*) FROM noetl.event WHERE execution_id = %s "
            "GROUP BY event_type ORDER BY 1",
            (str(EXECUTION),),
        ).fetchall()
        rejected = conn.execute(
            "SELECT source, position, reason, raw FROM noetl.event_rejected"
        ).fetchall()
    # The two identical id-less events of one message are two events.
    assert stored == [("command.issued", 2), ("step.enter", 1), ("step.exit", 1)]
    ((source, position, reason, raw),) = rejected
    assert (source, position) == (f"nats:{subject}", 2)  # the message's stream sequence
    assert reason.startswith("event 3 of 3: created_at") and "RFC 3339" in reason
    assert json.loads(raw) == row(3, "call.done", created_at="1776402209")
    # The stream is left as it was; its messages stay for upstream's own readers.
    info = await js.stream_info(upstream.stream)
    assert info.config == before and info.state.messages == 4
    # Read again from the start (another durable): every event is a duplicate, none is new.
    again = Names(upstream.stream, upstream.prefix, upstream.durable + "b")
    second = await Bridge(database_url, config(nats_url, again)).run()
    assert (second.stored, second.duplicates) == (0, 4)


async def test_upstreams_shard_consumers_attach_beside_the_bridge(
    nats_url: str, database_url: str, js: Any
) -> None:
    names = unique_names()
    assert await ensure_stream(js, names.stream, names.prefix)  # what `nats init` creates
    try:
        shards = 2
        for index in range(shards):  # upstream's projector: one durable consumer per shard
            await js.add_consumer(
                names.stream,
                api.ConsumerConfig(
                    durable_name=f"shard{index}",
                    ack_policy=api.AckPolicy.EXPLICIT,
                    filter_subject=f"{names.prefix}.*.*.*.{index}",
                ),
            )
        for i in range(10):
            envelope = row(100 + i, "command.completed", status="COMPLETED")
            await js.publish(
                f"{names.prefix}.t.o.{EXECUTION}.{i % shards}", json.dumps(envelope).encode()
            )
        stats = await Bridge(database_url, config(nats_url, names)).run()
        assert (stats.stored, stats.rejected) == (10, 0)
        for index in range(shards):
            shard = await js.consumer_info(names.stream, f"shard{index}")
            assert shard.num_pending == 5  # untouched by the bridge: still theirs to read
    finally:
        await js.delete_stream(names.stream)
