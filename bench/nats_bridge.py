"""End-to-end throughput of the NATS path against the direct PostgreSQL sink, in one run.

    python bench/nats_bridge.py [--events 40000] [--only procs] [--server ...] [--nats ...]

Each measurement gets a fresh migrated database, and a `direct` measurement (`PostgresEventSink.
emit_many` in batches of 2,000) runs before and after every NATS measurement: `vs_direct` is the
rate over the mean of the two directs around it, so a noisy machine shifts both alike.

* ``bridge xN``: every event is published first, then N in-process bridges (one event loop)
  drain the stream; wall time from their start to the last one finishing.
* ``bridge xN procs``: the same backlog drained by N ``projector consume --until-empty``
  processes (N cores); timed from the first delivery (consumer info, polled) to the last process
  exiting, so interpreter start-up is not counted.
* ``end-to-end xN``: bridges (in-process) started first, then the publisher in the same loop.
* ``end-to-end xN procs``: N bridge processes waiting on the consumer, then a separate publisher
  process (as workers are); timed from "go" to the last event stored (row count polled).

Prints JSON lines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import nats
import psycopg
from nats.js import api
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


def consume_argv(url: str, nats_url: str, stream: str, prefix: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "projector",
        "--database-url",
        url,
        "consume",
        "--nats-url",
        nats_url,
        "--stream",
        stream,
        "--subject-prefix",
        prefix,
        "--durable",
        "projector",
        "--log-interval",
        "0",
        "--json",
        *extra,
    ]


async def poll(predicate: Callable[[], Awaitable[bool]], interval: float) -> None:
    """Wait (at most 10 minutes) until `predicate` holds."""
    async with asyncio.timeout(600):
        while not await predicate():  # noqa: ASYNC110 - polling another process's progress
            await asyncio.sleep(interval)


async def via_processes(
    url: str, nats_url: str, n: int, bridges: int, end_to_end: bool
) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    stream, prefix = f"BENCH_{tag}", f"bench{tag}.events"
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, stream, prefix)
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name="projector",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30.0,
            max_ack_pending=20_000,
            filter_subject=f"{prefix}.>",
        ),
    )
    publisher = [sys.executable, __file__, "--publish-only", "--events", str(n), "--nats", nats_url]
    publisher += ["--stream", stream, "--prefix", prefix]
    procs: list[asyncio.subprocess.Process] = []
    try:
        if not end_to_end:
            pub = await asyncio.create_subprocess_exec(
                *publisher, "--go", stdout=asyncio.subprocess.PIPE
            )
            await pub.communicate()
            argv = consume_argv(url, nats_url, stream, prefix, "--until-empty")
            procs = [
                await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
                for _ in range(bridges)
            ]

            async def delivering() -> bool:
                info = await js.consumer_info(stream, "projector")
                return bool(info.delivered.consumer_seq > 0)

            await poll(delivering, 0.01)
            start = time.perf_counter()
            outs = [await p.communicate() for p in procs]
            elapsed = time.perf_counter() - start
            stored = sum(json.loads(o[0].decode().splitlines()[-1])["stored"] for o in outs)
            assert stored == n, (stored, n)
            return {"events_per_s": round(n / elapsed)}
        argv = consume_argv(url, nats_url, stream, prefix)
        procs = [
            await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
            for _ in range(bridges)
        ]

        # Ready when every bridge has its pull request waiting on the consumer.
        async def waiting() -> bool:
            info = await js.consumer_info(stream, "projector")
            return bool((info.num_waiting or 0) >= bridges)

        await poll(waiting, 0.02)
        pub = await asyncio.create_subprocess_exec(
            *publisher, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        assert pub.stdout is not None and pub.stdin is not None
        await pub.stdout.readline()  # events built, connected
        start = time.perf_counter()
        pub.stdin.write(b"go\n")
        await pub.stdin.drain()
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:

            async def all_stored() -> bool:
                cur = await conn.execute("SELECT count(*) FROM noetl.event")
                row = await cur.fetchone()
                return bool(row and row[0] >= n)

            await poll(all_stored, 0.01)
        elapsed = time.perf_counter() - start
        out, _ = await pub.communicate()
        publish_rate = json.loads(out.decode().splitlines()[-1])["publish_per_s"]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            await p.communicate()
        return {"events_per_s": round(n / elapsed), "publish_per_s": publish_rate}
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        await js.delete_stream(stream)
        await nc.close()


async def publish_only(args: argparse.Namespace) -> None:
    """The publisher process: build the events, connect, wait for "go" (unless --go), publish."""
    evs = events(args.events)
    async with NatsEventSink(args.nats, stream=args.stream, subject_prefix=args.prefix) as sink:
        if not args.go:
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
        start = time.perf_counter()
        for i in range(0, len(evs), 2000):
            await sink.emit_many(evs[i : i + 2000])
        rate = len(evs) / (time.perf_counter() - start)
    print(json.dumps({"publish_per_s": round(rate)}), flush=True)


RUNS: list[tuple[str, int, bool, bool]] = [
    ("bridge x1", 1, False, False),
    ("bridge x2", 2, False, False),
    ("bridge x1 procs", 1, False, True),
    ("bridge x2 procs", 2, False, True),
    ("end-to-end x1", 1, True, False),
    ("end-to-end x2", 2, True, False),
    ("end-to-end x1 procs", 1, True, True),
    ("end-to-end x2 procs", 2, True, True),
]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--only", default="", help="run only the measurements containing this")
    parser.add_argument("--publish-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--go", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--stream", help=argparse.SUPPRESS)
    parser.add_argument("--prefix", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.publish_only:
        await publish_only(args)
        return
    evs = events(args.events)

    async def measure(bridges: int, e2e: bool, procs: bool) -> dict[str, float]:
        url = await asyncio.to_thread(fresh_db, args.server)
        try:
            if bridges == 0:
                return {"events_per_s": round(await direct(url, evs))}
            if procs:
                return await via_processes(url, args.nats, len(evs), bridges, e2e)
            return await via_nats(url, args.nats, evs, bridges, e2e)
        finally:
            await asyncio.to_thread(drop_db, args.server, url)

    def show(name: str, result: dict[str, float], **extra: float) -> None:
        print(json.dumps({"run": name, "events": len(evs), **result, **extra}), flush=True)

    before = await measure(0, False, False)
    show("direct", before)
    directs = [before["events_per_s"]]
    for name, bridges, e2e, procs in RUNS:
        if args.only not in name:
            continue
        result = await measure(bridges, e2e, procs)
        after = await measure(0, False, False)
        show("direct", after)
        baseline = statistics.mean([before["events_per_s"], after["events_per_s"]])
        show(name, result, vs_direct=round(result["events_per_s"] / baseline, 2))
        directs.append(after["events_per_s"])
        before = after
    print(json.dumps({"run": "direct (all)", "median_events_per_s": statistics.median(directs)}))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
