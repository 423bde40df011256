"""Scenario 3: 200 concurrent tasks awaiting `emit()` of single events (group commit) vs the naive
sink: one autocommit `INSERT ... ON CONFLICT DO NOTHING` per event, from the same 200 tasks over a
pool of the same size (4 connections, the sink's default).

Reported beside the rates: per-call latency (p50, p99, max) and the client's CPU time per event
(this process: the callers, the group commit and the sink; the server's share is not counted).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from projector.database import CONNECT_KWARGS
from projector.envelope import ExecutorEvent

from ..events import copy_row, fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, measure_pair, percentile
from .common import COLUMNS, sink

ID, KEY, TITLE = 3, "group_commit", "Group commit"
TARGET = 10.0
POOL = 4
INSERT = (
    f"INSERT INTO noetl.event ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
    " ON CONFLICT DO NOTHING"
)


async def _drive(
    events: Sequence[ExecutorEvent], tasks: int, emit: Callable[[ExecutorEvent], Awaitable[object]]
) -> Sample:
    """`tasks` workers, each emitting its share one event at a time; per-call latencies in ms."""
    latencies: list[float] = []

    async def worker(share: Sequence[ExecutorEvent]) -> None:
        for event in share:
            t0 = time.perf_counter()
            await emit(event)
            latencies.append((time.perf_counter() - t0) * 1000)

    t0, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(events[i::tasks]) for i in range(tasks)))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
    return Sample(
        len(events),
        seconds,
        {
            "p50_ms": percentile(latencies, 50),
            "p99_ms": percentile(latencies, 99),
            "max_ms": max(latencies),
            "cpu_us_per_event": cpu / len(events) * 1e6,
        },
    )


async def run(ctx: Context, result: ScenarioResult) -> None:
    url = ctx.databases.fresh(KEY)
    n, tasks, rounds = ctx.sizes.group_commit_events, ctx.sizes.group_commit_tasks, ctx.sizes.rounds
    result.params = {"events_per_round": n, "tasks": tasks, "pool_size": POOL, "rounds": rounds}

    async def candidate(_: int) -> Sample:
        events = fresh_events(n)
        async with sink(url, max_pool_size=POOL) as s:
            return await _drive(events, tasks, s.emit)

    async def baseline(_: int) -> Sample:
        events = fresh_events(n)
        async with AsyncConnectionPool(
            url,
            min_size=POOL,
            max_size=POOL,
            open=False,
            kwargs={**CONNECT_KWARGS, "autocommit": True},
        ) as pool:
            await pool.wait()

            async def insert(event: ExecutorEvent) -> None:
                async with pool.connection() as conn:
                    row = list(copy_row(event))
                    row[6] = row[6] if isinstance(row[6], Jsonb) else Jsonb(row[6])
                    row[8] = None if row[8] is None else Jsonb(row[8])
                    await conn.execute(INSERT, row)

            return await _drive(events, tasks, insert)

    with ctx.progress(TITLE, 2 * rounds) as tick:
        pair = await measure_pair(
            ("emit() group commit", candidate), ("INSERT per event", baseline), rounds, tick=tick
        )
    result.add_series(pair.candidate, pair.baseline)

    def med(series_samples: list[Sample], key: str) -> float:
        return percentile([s.extra[key] for s in series_samples], 50)

    c, b = pair.candidate.samples, pair.baseline.samples
    result.metrics = [
        Metric.against(
            "emit() x200 tasks", pair.candidate.median_rate, "events/s", pair.ratio, TARGET
        ),
        Metric("emit() latency p50", med(c, "p50_ms"), "ms"),
        Metric("emit() latency p99", med(c, "p99_ms"), "ms"),
        Metric("emit() client CPU per event", med(c, "cpu_us_per_event"), "µs"),
        Metric("naive INSERT x200 tasks (baseline)", pair.baseline.median_rate, "events/s"),
        Metric("naive latency p50", med(b, "p50_ms"), "ms"),
        Metric("naive latency p99", med(b, "p99_ms"), "ms"),
    ]
    ctx.databases.drop(url)
