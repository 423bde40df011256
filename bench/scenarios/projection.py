"""Scenario 5: projection catch-up, `projector project --once` (`Projector.once()`, the same code
without process start-up) over N events just ingested, vs the ingest rate of those events.

Each round ingests N fresh events with `emit_many` (timed: the baseline) and then projects them
(timed: the candidate), so both are measured on the same rows and the same table size. Target:
the projector keeps up (>= 1x).
"""

from __future__ import annotations

from ..events import fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, Timer, measure_pair
from .common import timed_emit_many

ID, KEY, TITLE = 5, "projection", "Projection catch-up"
TARGET = 1.0


async def run(ctx: Context, result: ScenarioResult) -> None:
    from projector.projection import Projector

    url = ctx.databases.fresh(KEY)
    n, rounds = ctx.sizes.projection_events, ctx.sizes.rounds
    projector = Projector(url)
    result.params = {"events_per_round": n, "rounds": rounds, "max_events": projector.max_events}
    await projector.once()  # creates the checkpoint row: not part of any round

    async def ingest(_: int) -> Sample:
        return await timed_emit_many(url, fresh_events(n))

    async def project(_: int) -> Sample:
        with Timer() as t:
            count = await projector.once()
        if count != n:
            raise AssertionError(f"projected {count} events, expected {n}")
        return Sample(count, t.seconds)

    with ctx.progress(TITLE, 2 * rounds) as tick:
        pair = await measure_pair(
            ("project --once", project),
            ("emit_many ingest", ingest),
            rounds,
            tick=tick,
            fixed_order=True,
        )
    result.add_series(pair.candidate, pair.baseline)
    result.metrics = [
        Metric.against(
            "project --once", pair.candidate.median_rate, "events/s", pair.ratio, TARGET
        ),
        Metric(
            "emit_many ingest of the same events (baseline)", pair.baseline.median_rate, "events/s"
        ),
    ]
    scenario1 = ctx.cache.get("ingest_rate")
    if scenario1:
        result.notes.append(
            f"vs scenario 1's emit_many median ({scenario1:,.0f}/s): "
            f"{pair.candidate.median_rate / scenario1:.2f}x"
        )
    ctx.databases.drop(url)
