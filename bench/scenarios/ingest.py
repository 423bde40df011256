"""Scenario 1: bulk ingest through `emit_many` vs raw binary COPY of the same rows."""

from __future__ import annotations

from ..events import fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, measure_pair
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

    with ctx.progress(TITLE, 2 * rounds) as tick:
        pair = await measure_pair(
            ("emit_many", candidate), ("raw COPY", baseline), rounds, tick=tick
        )
    result.add_series(pair.candidate, pair.baseline)
    ctx.cache["ingest_rate"] = pair.candidate.median_rate
    result.metrics = [
        Metric.against("emit_many", pair.candidate.median_rate, "events/s", pair.ratio, TARGET),
        Metric("raw binary COPY (baseline)", pair.baseline.median_rate, "events/s"),
    ]
    ctx.databases.drop(url)
