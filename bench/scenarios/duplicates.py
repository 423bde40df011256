"""Scenario 2: `emit_many` when 50 % and 100 % of the events are already stored, vs fresh ones.

The already-stored share is written beforehand (not timed) and spread evenly (every other event
for 50 %), so every batch of 2,000 carries the same mix. It is written by the sink itself, as a
redelivery finds it; "100% stored by another writer" writes it with raw COPY instead, so the rows
have no content hash and every duplicate is compared in full in the server (the slow path). Rates
count every item the sink handled, duplicates included.
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

    def variant(stored_every: int | None, expect_duplicates: int, by_copy: bool = False) -> Variant:
        async def go(_: int) -> Sample:
            events = fresh_events(n)
            if stored_every is not None and by_copy:
                conn = await connect(url)
                try:
                    await copy_rows(conn, [copy_row(e) for e in events[::stored_every]])
                finally:
                    await conn.close()
            elif stored_every is not None:
                await timed_emit_many(url, events[::stored_every])
            sample = await timed_emit_many(url, events)
            if sample.extra["duplicates"] != expect_duplicates:
                raise AssertionError(f"expected {expect_duplicates} duplicates: {sample.extra}")
            return sample

        return go

    variants: dict[str, Variant] = {
        "fresh": variant(None, 0),
        "50% stored": variant(2, (n + 1) // 2),
        "100% stored": variant(1, n),
        "100% stored by another writer": variant(1, n, by_copy=True),
    }
    with ctx.progress(TITLE, len(variants) * rounds) as tick:
        series = await measure(variants, rounds, tick=tick)
    result.add_series(*series.values())
    fresh = series["fresh"]
    result.metrics = [Metric("fresh (baseline)", fresh.median_rate, "events/s")]
    for name in ("50% stored", "100% stored", "100% stored by another writer"):
        s = series[name]
        # Issue 2: a batch of duplicates must not be slower than a fresh one.
        target = 1.0 if name == "100% stored" else None
        result.metrics.append(
            Metric.against(name, s.median_rate, "events/s", median_ratio(s, fresh), target)
        )
    ctx.databases.drop(url)
