"""The bridge in-process: round trip, redelivery, rejects, PostgreSQL outages."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest
from psycopg import sql

from projector import NatsEventSink
from projector.bridge import Bridge, BridgeConfig
from projector.sinks import envelope_bytes
from tests.natsutil import Names, make_events, wait_for

pytestmark = pytest.mark.nats

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def config(nats_url: str, names: Names, **kw: Any) -> BridgeConfig:
    """Bridge settings for this test's names; stops once the consumer is drained."""
    kw.setdefault("until_empty", True)
    kw.setdefault("log_interval", 0)
    return BridgeConfig(
        nats_url=nats_url,
        stream=names.stream,
        subject_prefix=names.prefix,
        durable=names.durable,
        **kw,
    )


async def stored_ids(aconn: Conn) -> list[str]:
    cur = await aconn.execute("SELECT event_id FROM noetl.event ORDER BY event_id")
    return [row[0] for row in await cur.fetchall()]


async def publish(nats_url: str, names: Names, events: list[Any]) -> None:
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        await sink.emit_many(events)


async def test_round_trip_stores_every_event_once(
    nats_url: str, names: Names, database_url: str, aconn: Conn, js: Any
) -> None:
    events = make_events(250, execution_id="1001") + make_events(50, execution_id="x.2")
    await publish(nats_url, names, events)
    stats = await Bridge(database_url, config(nats_url, names, batch=64)).run()
    assert stats.stored == 300 and stats.duplicates == 0 and stats.rejected == 0
    assert stats.pending == 0 and stats.ack_pending == 0
    cur = await aconn.execute(
        "SELECT count(*), count(DISTINCT (execution_id, event_id)) FROM noetl.event"
    )
    assert await cur.fetchone() == (300, 300)
    cur = await aconn.execute(
        "SELECT execution_id, event_type, step, status, created_at, context FROM noetl.event "
        "WHERE execution_id = 'x.2' AND event_id = 'e7'"
    )
    row = await cur.fetchone()
    original = events[257]
    assert row == (
        "x.2",
        original.event_type,
        original.step,
        original.status,
        original.created_at,
        original.context,
    )
    # Limits retention: the messages stay for other readers; the durable consumer is done.
    assert (await js.stream_info(names.stream)).state.messages == 300
    consumer = await js.consumer_info(names.stream, names.durable)
    assert (consumer.num_pending, consumer.num_ack_pending) == (0, 0)


async def test_redelivered_and_already_stored_events_count_as_duplicates(
    nats_url: str, names: Names, database_url: str, aconn: Conn, js: Any
) -> None:
    events = make_events(20)
    await publish(nats_url, names, events[:10])
    await Bridge(database_url, config(nats_url, names)).run()
    # The first ten arrive again without a Nats-Msg-Id (as after the broker's duplicate window),
    # with ten new ones.
    for event in events:
        await js.publish(f"{names.prefix}.{event.execution_id}", envelope_bytes(event))
    # One batch is fetched and left unacknowledged (nak): it comes back as a redelivery.
    probe = await js.pull_subscribe_bind(durable=names.durable, stream=names.stream)
    first = await probe.fetch(5, timeout=5)
    for msg in first:
        await msg.nak()
    await probe.unsubscribe()
    stats = await Bridge(database_url, config(nats_url, names)).run()
    assert stats.stored == 10 and stats.duplicates == 10
    assert stats.redelivered >= len(first) > 0
    assert await stored_ids(aconn) == sorted(e.event_id or "" for e in events)


async def test_invalid_message_is_rejected_with_raw_bytes_and_terminated(
    nats_url: str, names: Names, database_url: str, aconn: Conn, js: Any
) -> None:
    good = make_events(3)
    await publish(nats_url, names, good[:2])
    bad = b'{"execution_id": 1, "event_type": "x", "created_at": "not a time"}\xff'
    ack = await js.publish(f"{names.prefix}.bad", bad, stream=names.stream)
    await publish(nats_url, names, good[2:])
    stats = await Bridge(database_url, config(nats_url, names)).run()
    assert stats.stored == 3 and stats.rejected == 1
    cur = await aconn.execute(
        "SELECT raw_bytes, source, position, reason FROM noetl.event_rejected"
    )
    rows = await cur.fetchall()
    assert len(rows) == 1
    raw_bytes, source, position, reason = rows[0]
    assert bytes(raw_bytes) == bad
    assert source == f"nats:{names.prefix}.bad"
    assert position == ack.seq
    assert reason
    # Terminated, not redelivered: a second bridge finds nothing to do.
    again = await Bridge(database_url, config(nats_url, names)).run()
    assert again.rejected == 0 and again.stored == 0 and again.redelivered == 0
    cur = await aconn.execute("SELECT count(*) FROM noetl.event_rejected")
    assert await cur.fetchone() == (1,)


async def test_two_bridges_on_one_consumer_store_each_event_exactly_once(
    nats_url: str, names: Names, database_url: str, aconn: Conn
) -> None:
    events = make_events(3000)
    await publish(nats_url, names, events)
    bridges = [Bridge(database_url, config(nats_url, names, batch=100)) for _ in range(2)]
    results = await asyncio.gather(*(b.run() for b in bridges))
    assert sum(s.stored for s in results) == 3000
    assert sum(s.duplicates for s in results) == 0
    assert await stored_ids(aconn) == sorted(e.event_id or "" for e in events)


async def test_stop_finishes_the_batch_in_flight(
    nats_url: str, names: Names, database_url: str, aconn: Conn, js: Any
) -> None:
    await publish(nats_url, names, make_events(500))
    bridge = Bridge(database_url, config(nats_url, names, batch=50, until_empty=False))
    task = asyncio.create_task(bridge.run())

    async def some_stored() -> bool:
        return bridge.stats.stored > 0

    await wait_for(some_stored, "the first batch")
    bridge.stop()
    stats = await asyncio.wait_for(task, 60)
    info = await js.consumer_info(names.stream, names.durable)
    assert info.num_ack_pending == 0  # everything fetched was acknowledged
    assert len(await stored_ids(aconn)) == stats.stored == 500 - info.num_pending


async def test_postgres_outage_mid_stream_loses_nothing(
    nats_url: str, names: Names, database_url: str, server_url: str, aconn: Conn
) -> None:
    events = make_events(2000)
    await publish(nats_url, names, events[:500])
    dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    bridge = Bridge(
        database_url, config(nats_url, names, batch=50, db_retry_for=1.0, until_empty=False)
    )
    task = asyncio.create_task(bridge.run())

    async def first_half_stored() -> bool:
        return bridge.stats.stored >= 500

    await wait_for(first_half_stored, "the first 500 events")
    admin = await psycopg.AsyncConnection.connect(server_url, autocommit=True)
    try:
        ident = sql.Identifier(str(dbname))
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        await aconn.close()
        await publish(nats_url, names, events[500:])

        async def bridge_saw_the_outage() -> bool:
            return bridge.stats.db_failures >= 1

        await wait_for(bridge_saw_the_outage, "the bridge to give up a batch")
        await admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
    finally:
        await admin.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(sql.Identifier(str(dbname)))
        )
        await admin.close()

    check = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        # Counted in the database: the bridge's own counters also include duplicates (a batch
        # split over two transactions may commit half before the outage hits the other half).
        async def all_stored() -> bool:
            return len(await stored_ids(check)) >= 2000

        await wait_for(all_stored, "every event after the outage", limit=120)
        bridge.stop()
        stats = await asyncio.wait_for(task, 60)
        assert stats.db_failures >= 1
        assert await stored_ids(check) == sorted(e.event_id or "" for e in events)
    finally:
        await check.close()


def test_postgres_backoff_doubles_from_one_second_to_thirty() -> None:
    bridge = Bridge("postgresql://unused", BridgeConfig())
    assert [bridge._db_failed() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert bridge.stats.db_failures == 7
    bridge._backoff.reset()  # what a stored batch does
    assert bridge._db_failed() == 1
