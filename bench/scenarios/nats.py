"""Scenario 10: the NATS path end to end (publish -> stored) against the direct PostgreSQL sink.

Variants, alternated round by round on one fresh database:

* ``direct emit_many`` (the baseline): `PostgresEventSink.emit_many` of N fresh events in this
  process, the pool opened before the clock starts (as in scenario 1).
* ``end to end, N bridge(s)``: N ``projector consume`` processes wait on the durable consumer of a
  stream made for this round (the clock starts once every one has a pull request waiting); then a
  publisher process (``python -m bench.nats_child``, a worker: `NatsEventSink.emit_many` in lists
  of 2,000) is told to go. The clock runs from "go" to the moment the consumer reports every one of
  the N messages delivered and acknowledged; the bridges acknowledge only after the transaction
  holding the event committed, so that is the moment the last event was stored. The row count is
  checked afterwards (untimed). Interpreter start-up of the processes is not timed.
* ``publisher alone``: the publisher process into a stream of its own with no bridge running:
  the rate `NatsEventSink.emit_many` reaches by itself (go -> last acknowledgement, as the
  publisher measures it).

Every round gets its own stream, subject prefix and durable consumer, deleted afterwards. Without
a NATS server with JetStream at ``--nats-url`` the scenario is skipped.

CPU per event, next to the wall-clock ratio: each process's user + system CPU time over the timed
span divided by the events stored: the bridges (``/proc/<pid>/stat`` read at "go" and when the last
event is acknowledged, :mod:`bench.proccpu`), the publisher (its own ``getrusage`` over go -> last
acknowledgement), the nats-server process (``/proc``, when this user may read it; a server shared
with other clients counts their work too) and, for the direct baseline, this process during
`emit_many`. The target compares the bridge's figure with the direct sink client's, measured in
the same run: the bridge's work (receiving, parsing and validating JSON, acknowledging) over what a
client that already holds envelopes spends. PostgreSQL's CPU is not counted for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import statistics
import sys
import time
import uuid
from typing import Any

import psycopg
from nats.js import api

from projector.errors import NatsUnavailable
from projector.jetstream import connect, ensure_stream

from ..events import fresh_events
from ..proccpu import cpu_seconds, pids_named
from ..runner import (
    Context,
    Metric,
    Sample,
    ScenarioResult,
    Series,
    SkipScenario,
    measure,
    median_ratio,
)
from .common import BATCH, timed_emit_many

ID, KEY, TITLE = 10, "nats", "NATS end to end"
TARGET = 0.5  # one bridge, of the direct rate
#: The bridge's CPU per stored event may be at most this many times the direct client's.
CPU_TARGET = 1.5
DURABLE = "projector"
POLL = 0.01
START_LIMIT = 60.0  # seconds for the processes to start and connect


async def connect_or_skip(url: str) -> Any:
    """A connection to a NATS server with JetStream at `url`, else `SkipScenario`."""
    quiet = logging.getLogger("projector.jetstream")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # the skip message says it once; no warning per attempt
    try:
        nc = await connect(url, name="noetl-projector-bench", connect_timeout=2)
    except NatsUnavailable as exc:
        raise SkipScenario(
            f"no NATS server answers at {url}; start `nats-server -js` "
            "or pass --nats-url / PROJECTOR_NATS_URL"
        ) from exc
    finally:
        quiet.setLevel(level)
    try:
        await nc.jetstream().account_info()
    except Exception as exc:
        await nc.close()
        raise SkipScenario(
            f"the NATS server at {url} has no JetStream (start it with -js)"
        ) from exc
    return nc


class Round:
    """One round's stream, subject prefix and durable consumer; the stream is deleted on exit."""

    def __init__(self, js: Any) -> None:
        tag = uuid.uuid4().hex[:10]
        self.js = js
        self.stream = f"BENCH_{tag}"
        self.prefix = f"bench{tag}.events"

    async def __aenter__(self) -> Round:
        await ensure_stream(self.js, self.stream, self.prefix)
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.js.delete_stream(self.stream)

    async def add_consumer(self) -> None:
        """The durable consumer with the settings `projector consume` would create it with."""
        await self.js.add_consumer(
            self.stream,
            api.ConsumerConfig(
                durable_name=DURABLE,
                name=DURABLE,
                ack_policy=api.AckPolicy.EXPLICIT,
                deliver_policy=api.DeliverPolicy.ALL,
                ack_wait=30.0,
                max_ack_pending=20_000,
                filter_subject=f"{self.prefix}.>",
            ),
        )


async def poll(predicate: Any, what: str, limit: float, interval: float = POLL) -> None:
    deadline = time.monotonic() + limit
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:.0f} s waiting for {what}")
        await asyncio.sleep(interval)


async def start_publisher(nats_url: str, r: Round, n: int) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.nats_child",
        nats_url,
        r.stream,
        r.prefix,
        str(n),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), START_LIMIT)
    if not line.startswith(b"ready"):
        raise RuntimeError("the publisher process did not start")
    return proc


async def go(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()


async def publisher_report(proc: asyncio.subprocess.Process) -> tuple[float, float]:
    """The publisher's seconds (go -> last acknowledgement) and CPU seconds over them."""
    out, _ = await asyncio.wait_for(proc.communicate(), START_LIMIT * 5)
    if proc.returncode != 0:
        raise RuntimeError(f"the publisher process exited with {proc.returncode}")
    report = json.loads(out.decode().splitlines()[-1])
    return float(report["seconds"]), float(report["cpu_seconds"])


def nats_server_cpu() -> float | None:
    """CPU seconds of the nats-server process so far (None: none found, or several)."""
    pids = pids_named("nats-server")
    return cpu_seconds(pids[0]) if len(pids) == 1 else None


def cpu_of(pids: list[int]) -> float | None:
    """The CPU seconds of `pids` together (None when one cannot be read)."""
    seconds = [cpu_seconds(pid) for pid in pids]
    return None if None in seconds else sum(s for s in seconds if s is not None)


def spent(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def consume_argv(db_url: str, nats_url: str, r: Round) -> list[str]:
    return [
        sys.executable,
        "-m",
        "projector",
        "--database-url",
        db_url,
        "consume",
        "--nats-url",
        nats_url,
        "--stream",
        r.stream,
        "--subject-prefix",
        r.prefix,
        "--durable",
        DURABLE,
        "--log-interval",
        "0",
        "--json",
    ]


async def count_rows(db_url: str) -> int:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT count(*) FROM noetl.event")
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def end_to_end(db_url: str, nats_url: str, js: Any, n: int, bridges: int) -> Sample:
    """`bridges` consume processes waiting, then a publisher process: go -> all n stored."""
    async with Round(js) as r:
        await r.add_consumer()
        procs = [
            await asyncio.create_subprocess_exec(
                *consume_argv(db_url, nats_url, r),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(bridges)
        ]
        pub: asyncio.subprocess.Process | None = None
        try:

            async def info() -> Any:
                for p in procs:
                    if p.returncode is not None:
                        _, err = await p.communicate()
                        raise RuntimeError(
                            f"a bridge exited with {p.returncode}: {err.decode()[-2000:]}"
                        )
                return await js.consumer_info(r.stream, DURABLE)

            async def waiting() -> bool:
                return bool(((await info()).num_waiting or 0) >= bridges)

            async def stored() -> bool:
                i = await info()
                return bool(
                    i.delivered.stream_seq >= n and i.num_pending == 0 and i.num_ack_pending == 0
                )

            pub = await start_publisher(nats_url, r, n)
            await poll(waiting, "the bridges' pull requests", START_LIMIT, 0.02)
            before = await count_rows(db_url)
            pids = [p.pid for p in procs]
            bridge_cpu, server_cpu = cpu_of(pids), nats_server_cpu()
            start = time.perf_counter()
            await go(pub)
            await poll(stored, "every event to be stored", 120 + n / 500)
            seconds = time.perf_counter() - start
            bridge_cpu = spent(bridge_cpu, cpu_of(pids))
            server_cpu = spent(server_cpu, nats_server_cpu())
            publish, publish_cpu = await publisher_report(pub)
            rows = await count_rows(db_url) - before
            if rows != n:
                raise AssertionError(f"{rows} of {n} events were stored")
            for p in procs:
                p.send_signal(signal.SIGTERM)
            summaries = []
            for p in procs:
                out, err = await asyncio.wait_for(p.communicate(), 60)
                if p.returncode != 0:
                    raise RuntimeError(
                        f"a bridge exited with {p.returncode}: {err.decode()[-2000:]}"
                    )
                summaries.append(json.loads(out.decode().splitlines()[-1]))
        finally:
            for p in [*procs, *([pub] if pub is not None else [])]:
                if p.returncode is None:
                    p.kill()
                    await p.wait()
    return Sample(
        n,
        seconds,
        {
            "publish_seconds": publish,
            "publish_rate": n / publish if publish > 0 else 0.0,
            "bridge_cpu_seconds": bridge_cpu,
            "publisher_cpu_seconds": publish_cpu,
            "nats_server_cpu_seconds": server_cpu,
            "stored": [s["stored"] for s in summaries],
            "duplicates": sum(s["duplicates"] for s in summaries),
            "redelivered": sum(s["redelivered"] for s in summaries),
            "batches": sum(s["batches"] for s in summaries),
        },
    )


async def publish_alone(nats_url: str, js: Any, n: int) -> Sample:
    """The publisher process into a stream with no consumer: go -> last acknowledgement."""
    async with Round(js) as r:
        pub = await start_publisher(nats_url, r, n)
        try:
            await go(pub)
            seconds, cpu = await publisher_report(pub)
            stream = await js.stream_info(r.stream)
            if stream.state.messages != n:
                raise AssertionError(f"{stream.state.messages} of {n} events are in the stream")
        finally:
            if pub.returncode is None:
                pub.kill()
                await pub.wait()
    return Sample(n, seconds, {"publisher_cpu_seconds": cpu})


def per_event_us(series: Series, key: str) -> float | None:
    """The median over `series`' rounds of `key` (CPU seconds) per event, in µs; None when a
    round could not measure it."""
    values = [s.extra.get(key) for s in series.samples]
    if not values or any(v is None for v in values):
        return None
    pairs = zip(values, series.samples, strict=True)
    return statistics.median(v / s.events * 1e6 for v, s in pairs if v is not None)


def cpu_metrics(direct: Series, one: Series, two: Series) -> list[Metric]:
    """CPU per stored event of each process, and the bridge's against the direct client's."""
    client = per_event_us(direct, "cpu_seconds")
    metrics: list[Metric] = []
    for label, series in (("1 bridge", one), ("2 bridges", two)):
        bridge = per_event_us(series, "bridge_cpu_seconds")
        if bridge is not None and client:
            # The table's targets are lower bounds: "bridge <= 1.5x the client" is written as
            # client / bridge >= 1 / 1.5.
            metrics.append(
                Metric.against(
                    f"CPU per event: {label} (ratio: direct client's / bridge's)",
                    bridge,
                    "µs",
                    client / max(bridge, 1e-9),
                    round(1 / CPU_TARGET, 3) if label == "1 bridge" else None,
                )
            )
    for label, series, key in (
        ("publisher, while 1 bridge stores", one, "publisher_cpu_seconds"),
        ("nats-server, while 1 bridge stores", one, "nats_server_cpu_seconds"),
        ("direct sink client (emit_many)", direct, "cpu_seconds"),
    ):
        value = per_event_us(series, key)
        if value is not None:
            metrics.append(Metric(f"CPU per event: {label}", value, "µs"))
    return metrics


async def run(ctx: Context, result: ScenarioResult) -> None:
    nc = await connect_or_skip(ctx.nats_url)
    try:
        js = nc.jetstream()
        url = ctx.databases.fresh(KEY)
        n, rounds = ctx.sizes.nats_events, ctx.sizes.rounds
        result.params = {
            "events_per_round": n,
            "rounds": rounds,
            "publish_batch": 2_000,
            "direct_batch": BATCH,
            "nats_url": ctx.nats_url,
            "setup": "bridges: `projector consume` processes (defaults); publisher: its own "
            "process; direct: emit_many in the benchmark process",
        }

        async def direct(_: int) -> Sample:
            sample = await timed_emit_many(url, fresh_events(n))
            if sample.extra["inserted"] != n:
                raise AssertionError(f"emit_many inserted {sample.extra['inserted']} of {n}")
            return sample

        async def one(_: int) -> Sample:
            return await end_to_end(url, ctx.nats_url, js, n, 1)

        async def two(_: int) -> Sample:
            return await end_to_end(url, ctx.nats_url, js, n, 2)

        async def alone(_: int) -> Sample:
            return await publish_alone(ctx.nats_url, js, n)

        variants = {
            "direct emit_many": direct,
            "end to end, 1 bridge": one,
            "end to end, 2 bridges": two,
            "publisher alone": alone,
        }
        with ctx.progress(TITLE, len(variants) * rounds) as tick:
            series = await measure(variants, rounds, tick=tick)
        result.add_series(*series.values())
        base = series["direct emit_many"]
        e1, e2, pub = (
            series["end to end, 1 bridge"],
            series["end to end, 2 bridges"],
            series["publisher alone"],
        )
        during = [s.extra["publish_rate"] for s in e1.samples]
        result.metrics = [
            Metric.against(
                "end to end, 1 bridge (publish -> stored)",
                e1.median_rate,
                "events/s",
                median_ratio(e1, base),
                TARGET,
            ),
            Metric.against(
                "end to end, 2 bridges", e2.median_rate, "events/s", median_ratio(e2, base), None
            ),
            Metric.against(
                "publisher alone (NatsEventSink.emit_many)",
                pub.median_rate,
                "events/s",
                median_ratio(pub, base),
                None,
            ),
            Metric("direct emit_many (baseline)", base.median_rate, "events/s"),
            Metric(
                "publisher while 1 bridge stores",
                statistics.median(during) if during else 0.0,
                "events/s",
            ),
            *cpu_metrics(base, e1, e2),
        ]
        if per_event_us(e1, "bridge_cpu_seconds") is None:
            result.notes.append("the bridges' CPU time could not be read (no /proc)")
        ctx.databases.drop(url)
    finally:
        await nc.close()
