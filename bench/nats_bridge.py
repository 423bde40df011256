"""End-to-end throughput of the NATS path against the direct PostgreSQL sink, in one run.

    python bench/nats_bridge.py [--events 50000] [--server postgresql://...] [--nats nats://...]

Each measurement gets a fresh migrated database. `direct` is `PostgresEventSink.emit_many` in
batches of 2,000; `bridge xN` publishes every event first, then times N bridges draining the
stream into PostgreSQL (stored rows / wall time), so it measures the consume side; `end-to-end
xN` starts the bridges first and times publish -> last event stored. Prints JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import nats
import psycopg
from psycopg import sql

from projector import NatsEventSink, migrate
from projector.bridge import Bridge, BridgeConfig
from projector.envelope import ExecutorEvent
from projector.jetstream import ensure_stream
from projector.pgsink import PostgresEventSink


def events(n: int) -> list[ExecutorEvent]:
    base = datetime.now(UTC)
    return [
        ExecutorEvent(
            execution_id=str(7_000_000_000_000_000_000 + i // 50),
            event_id=str(i),
            event_type="command.completed",
            step=f"step_{i % 50}",
            status="COMPLETED",
            created_at=base + timedelta(microseconds=i),
            context={"i": i, "result": {"rows": i % 13, "pad": "x" * 80}},
        )
        for i in range(n)
    ]


def fresh_db(server: str) -> str:
    name = f"projector_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    parts = urlsplit(server)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    migrate.upgrade(url)
    return url


def drop_db(server: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


async def direct(url: str, evs: list[ExecutorEvent]) -> float:
    async with PostgresEventSink(url) as sink:
        start = time.perf_counter()
        for i in range(0, len(evs), 2000):
            await sink.emit_many(evs[i : i + 2000])
        return len(evs) / (time.perf_counter() - start)


async def publish(nats_url: str, stream: str, prefix: str, evs: list[ExecutorEvent]) -> None:
    async with NatsEventSink(nats_url, stream=stream, subject_prefix=prefix) as sink:
        for i in range(0, len(evs), 2000):
            await sink.emit_many(evs[i : i + 2000])


async def via_nats(
    url: str, nats_url: str, evs: list[ExecutorEvent], bridges: int, end_to_end: bool
) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"BENCH_{tag}", f"bench{tag}.events"
    nc = await nats.connect(nats_url)
    await ensure_stream(nc.jetstream(), stream, prefix)
    cfg = BridgeConfig(
        nats_url=nats_url, stream=stream, subject_prefix=prefix, until_empty=True, log_interval=0
    )
    try:
        start = time.perf_counter()
        if end_to_end:
            runners = [Bridge(url, cfg) for _ in range(bridges)]
            tasks = [asyncio.create_task(b.run()) for b in runners]
            await publish(nats_url, stream, prefix, evs)
            # until_empty may see an empty stream before the first publish: run again if so.
            stats = await asyncio.gather(*tasks)
            while sum(s.stored for s in stats) < len(evs):
                stats = [*stats, await Bridge(url, cfg).run()]
        else:
            await publish(nats_url, stream, prefix, evs)
            published = time.perf_counter()
            start = published
            stats = await asyncio.gather(*(Bridge(url, cfg).run() for _ in range(bridges)))
        elapsed = time.perf_counter() - start
        stored = sum(s.stored for s in stats)
        assert stored == len(evs), (stored, len(evs))
        return {"events_per_s": round(len(evs) / elapsed)}
    finally:
        await nc.jetstream().delete_stream(stream)
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    evs = events(args.events)
    runs: list[tuple[str, int, bool]] = [
        ("direct", 0, False),
        ("bridge x1", 1, False),
        ("bridge x2", 2, False),
        ("end-to-end x1", 1, True),
        ("end-to-end x2", 2, True),
    ]
    results: dict[str, float] = {}
    for name, bridges, e2e in runs:
        url = await asyncio.to_thread(fresh_db, args.server)
        try:
            if bridges == 0:
                rate = await direct(url, evs)
            else:
                rate = (await via_nats(url, args.nats, evs, bridges, e2e))["events_per_s"]
        finally:
            await asyncio.to_thread(drop_db, args.server, url)
        results[name] = rate
        ratio = rate / results["direct"]
        print(
            json.dumps(
                {
                    "run": name,
                    "events": len(evs),
                    "events_per_s": round(rate),
                    "vs_direct": round(ratio, 2),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    asyncio.run(main())
