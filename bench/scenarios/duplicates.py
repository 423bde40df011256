"""Scenario 2: `emit_many` when 50 % and 100 % of the events are already stored, vs fresh ones.

The already-stored share is written beforehand (raw COPY, not timed) and spread evenly (every
other event for 50 %), so every batch of 2,000 carries the same mix. Rates count every item the
sink handled, duplicates included.
"""

from __future__ import annotations

from ..events import copy_row, fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, Variant, measure, median_ratio
from .common import connect, copy_rows, timed_emit_many

ID, KEY, TITLE = 2, "duplicates", "Duplicate-heavy ingest"


async def run(ctx: Context, result: ScenarioResult) -> None:
    url = ctx.databases.fresh(KEY)
    n, rounds = ctx.sizes.duplicate_events, ctx.sizes.rounds
    result.params = {"events_per_round": n, "rounds": rounds}

    def variant(stored_every: int | None, expect_duplicates: int) -> Variant:
        async def go(_: int) -> Sample:
            events = fresh_events(n)
            if stored_every is not None:
                conn = await connect(url)
                try:
                    await copy_rows(conn, [copy_row(e) for e in events[::stored_every]])
                finally:
                    await conn.close()
            sample = await timed_emit_many(url, events)
            if sample.extra["duplicates"] != expect_duplicates:
                raise AssertionError(f"expected {expect_duplicates} duplicates: {sample.extra}")
            return sample

        return go

    variants: dict[str, Variant] = {
        "fresh": variant(None, 0),
        "50% stored": variant(2, (n + 1) // 2),
        "100% stored": variant(1, n),
    }
    with ctx.progress(TITLE, 3 * rounds) as tick:
        series = await measure(variants, rounds, tick=tick)
    result.add_series(*series.values())
    fresh = series["fresh"]
    result.metrics = [Metric("fresh (baseline)", fresh.median_rate, "events/s")]
    for name in ("50% stored", "100% stored"):
        s = series[name]
        result.metrics.append(
            Metric.against(name, s.median_rate, "events/s", median_ratio(s, fresh), None)
        )
    ctx.databases.drop(url)
