"""Scenario 1: bulk ingest through `emit_many` vs raw binary COPY of the same rows.

The baseline writes the same rows (same columns, jsonb context, same table and indexes) in the same
batches of 2,000, one transaction each, over one connection. The sink writes with two concurrent
lanes, so a COPY over two connections is measured as well and reported beside it.
"""

from __future__ import annotations

from ..events import fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, measure, median_ratio
from .common import BATCH, timed_copy, timed_emit_many

ID, KEY, TITLE = 1, "ingest", "Bulk ingest"
TARGET = 0.9


async def run(ctx: Context, result: ScenarioResult) -> None:
    url = ctx.databases.fresh(KEY)
    n, rounds = ctx.sizes.ingest_events, ctx.sizes.rounds
    result.params = {"events_per_round": n, "batch_size": BATCH, "rounds": rounds}

    async def candidate(_: int) -> Sample:
        sample = await timed_emit_many(url, fresh_events(n))
        if sample.extra["inserted"] != n:
            raise AssertionError(f"emit_many inserted {sample.extra['inserted']} of {n}")
        return sample

    async def baseline(_: int) -> Sample:
        return await timed_copy(url, fresh_events(n))

    async def baseline2(_: int) -> Sample:
        return await timed_copy(url, fresh_events(n), connections=2)

    with ctx.progress(TITLE, 3 * rounds) as tick:
        series = await measure(
            {"emit_many": candidate, "raw COPY": baseline, "raw COPY, 2 connections": baseline2},
            rounds,
            tick=tick,
        )
    result.add_series(*series.values())
    sink, copy1, copy2 = series["emit_many"], series["raw COPY"], series["raw COPY, 2 connections"]
    ctx.cache["ingest_rate"] = sink.median_rate
    result.metrics = [
        Metric.against(
            "emit_many", sink.median_rate, "events/s", median_ratio(sink, copy1), TARGET
        ),
        Metric("raw binary COPY, 1 connection (baseline)", copy1.median_rate, "events/s"),
        Metric.against(
            "emit_many vs COPY on 2 connections",
            sink.median_rate,
            "events/s",
            median_ratio(sink, copy2),
            None,
        ),
        Metric("raw binary COPY, 2 connections", copy2.median_rate, "events/s"),
    ]
    ctx.databases.drop(url)
