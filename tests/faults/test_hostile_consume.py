"""Hostile messages among ordinary ones, through `projector consume`, while things restart.

PostgreSQL is restarted (fast shutdown), the first bridge is killed (SIGKILL), then NATS. Every
ordinary event (including ones whose text is hostile to a terminal) is stored exactly once; every
message that is not a storable envelope is kept in ``noetl.event_rejected`` with its subject and
stream sequence and terminated, so the bridge neither stops nor loops on it; nothing in the
bridges' output is a raw control character. (Rejections kept twice after a redelivery, and the
sink's retry after a PostgreSQL crash, are test_sink_crash_window.py's.)

HOSTILE is this suite's own set of messages today's code must reject (or store) without harm; the
issue's full corpus (sink hardening, `tests/hostile.py` on branch s11-sink) was not there yet when
this was written and should replace or extend it.
"""

from __future__ import annotations

import signal
from collections import Counter

import nats
import psycopg
import pytest

from projector import ExecutorEvent
from projector.jetstream import ensure_stream
from tests.faults.harness import (
    assert_state_equals_views,
    assert_stored_exactly,
    consume_process,
    in_thread,
    keys,
    stored_count,
    workload,
)
from tests.faults.servers import NatsServer, PgServer
from tests.natsutil import Names, unique_names, wait_for

pytestmark = pytest.mark.slow

ESC_TITLE = "\x1b]0;owned\x07"
ENVELOPE = '{"execution_id": "h1", "event_type": "call.done", "created_at": "2026-11-30T10:00:00Z"'

#: Message bodies that must be rejected: (label, bytes).
HOSTILE: list[tuple[str, bytes]] = [
    ("not json", b"not json at all"),
    ("empty", b""),
    ("json array", b"[1, 2, 3]"),
    ("json scalar", b"42"),
    ("json null", b"null"),
    ("empty object", b"{}"),
    ("not utf-8", b'\xff\xfe{"execution_id": "1"}'),
    ("nul in step", (ENVELOPE + ', "step": "a\\u0000b"}').encode()),
    ("lone surrogate", (ENVELOPE + ', "context": {"x": "\\ud800"}}').encode()),
    ("execution id an object", b'{"execution_id": {"a": 1}, "event_type": "x", "created_at": 1}'),
    ("bad created_at", (ENVELOPE.replace("2026-11-30T10:00:00Z", ESC_TITLE) + "}").encode()),
    ("truncated", ENVELOPE.encode()),
]


def terminal_hostile_events() -> list[ExecutorEvent]:
    """Valid envelopes whose text would drive a terminal: stored as sent, shown escaped."""
    base = workload(1, "t")[0]
    return [
        base.model_copy(update={"execution_id": f"t{ESC_TITLE}", "event_id": "esc"}),
        base.model_copy(update={"step": "\x9b2J[link=https://evil.example]x[/link]"}),
        base.model_copy(update={"event_id": "bidi", "status": "OK\u202eDELIAF"}),
    ]


async def publish_mixed(url: str, names: Names, events: list[ExecutorEvent]) -> dict[int, str]:
    """Publish `events` with a hostile message after every 40th; the hostile ones by sequence."""
    from projector.sinks import envelope_bytes

    rejected: dict[int, str] = {}
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js, names.stream, names.prefix)
        for n, event in enumerate(events):
            subject = f"{names.prefix}.{n % 13}"
            await js.publish(subject, envelope_bytes(event).rstrip(b"\n"))
            if n % 40 == 0:
                label, body = HOSTILE[(n // 40) % len(HOSTILE)]
                ack = await js.publish(f"{names.prefix}.hostile", body)
                rejected[ack.seq] = label
        # A subject that is not UTF-8 (nats-server takes any bytes but white space).
        nc._transport.write(b"PUB %b.\xff 2\r\n{}\r\n" % names.prefix.encode())
        await nc.flush()
        info = await js.stream_info(names.stream)
        rejected[info.state.last_seq] = "subject not utf-8"
    finally:
        await nc.close()
    return rejected


async def rejections(url: str) -> Counter[tuple[str, int]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT source, position FROM noetl.event_rejected")
        return Counter((str(r[0]), int(r[1])) for r in await cur.fetchall())


async def test_hostile_messages_through_consume_under_restarts(
    pg: PgServer, fault_db: str, own_nats: NatsServer
) -> None:
    names = unique_names()
    events = workload(300) + terminal_hostile_events()
    hostile = await publish_mixed(own_nats.url, names, events)
    assert len(hostile) > len(HOSTILE)
    async with consume_process(fault_db, own_nats.url, names) as first:
        await wait_for(lambda: at_least(fault_db, 1500), "the bridge to store the first events")
        await in_thread(pg.restart, "fast")
        await wait_for(lambda: at_least(fault_db, 3000), "the bridge to go on after PostgreSQL")
        await first.kill9()
    async with consume_process(fault_db, own_nats.url, names) as second:
        await wait_for(lambda: at_least(fault_db, 4000), "the second bridge to go on")
        await in_thread(own_nats.restart, "kill9")
        await wait_for(lambda: at_least(fault_db, len(events)), "every event to be stored")

        async def all_rejected() -> bool:
            return len(await rejections(fault_db)) >= len(hostile)

        await wait_for(all_rejected, "every hostile message to be rejected", limit=120)
        second.proc.send_signal(signal.SIGTERM)
        assert await second.finish() == 0, second.err
    await assert_stored_exactly(fault_db, keys(events))
    found = await rejections(fault_db)
    # Each hostile message, named by the subject it came on and its stream sequence.
    assert {position for _, position in found} == set(hostile)
    assert {source for source, _ in found} == {
        f"nats:{names.prefix}.hostile",
        f"nats:{names.prefix}.\\xff",
    }
    for err in (first.err, second.err):
        assert not [ch for ch in err if ord(ch) < 0x20 and ch not in "\t\n"], err
        assert not [ch for ch in err if 0x7F <= ord(ch) < 0xA0], err
    await assert_state_equals_views(fault_db)


async def at_least(url: str, n: int) -> bool:
    return await stored_count(url) >= n
