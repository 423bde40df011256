"""Scenario 5: projection catch-up, `projector project --once` (`Projector.once()`, the same code
without process start-up) over N events just ingested, vs the ingest rate of those events.

Each round ingests N fresh events with `emit_many` (timed: the baseline) and then projects them
(timed: the candidate), so both are measured on the same rows and the same table size. Target
(issue 15): >= 1.5x.

Then, on the same database: catch-up while the sink ingests (a running `Projector` beside
`emit_many` of N events: events/s from the first emit until the projector has everything, and the
lag after the last commit), and catch-up with two shards (`--shard 0/2`, `--shard 1/2`, both
`once()` side by side, after N events ingested) against one instance in the same run.
"""

from __future__ import annotations

import asyncio
import statistics

from ..events import fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, Timer, measure_pair
from .common import sink, timed_emit_many

ID, KEY, TITLE = 5, "projection", "Projection catch-up"
TARGET = 1.5


async def run(ctx: Context, result: ScenarioResult) -> None:
    from projector.projection import Projector, Shard, connect, horizon

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
    live = []
    for _ in range(rounds):
        events = fresh_events(n)
        stop = asyncio.Event()
        running = Projector(url, poll_interval=0.05)
        task = asyncio.create_task(running.run(stop))
        async with sink(url) as s:
            with Timer() as t:
                await s.emit_many(events)
                ingested = t.seconds
                conn = await connect(url)
                try:
                    target = await horizon(conn)
                    while True:  # until the running projector has everything committed
                        cur = await conn.execute(
                            "SELECT position::text FROM noetl.projector_checkpoint "
                            "WHERE name = 'default'"
                        )
                        row = await cur.fetchone()
                        if row is not None and int(row[0]) >= target:
                            break
                        await asyncio.sleep(0.01)
                finally:
                    await conn.close()
        stop.set()
        await task
        live.append((n / t.seconds, t.seconds - ingested))
    shard_rates = []
    for _ in range(rounds):
        await timed_emit_many(url, fresh_events(n))
        shards = [Projector(url, shard=Shard(k, 2)) for k in range(2)]
        with Timer() as t:
            counts = await asyncio.gather(*(p.once() for p in shards))
        if sum(counts) != n:
            raise AssertionError(f"two shards projected {sum(counts)} events, expected {n}")
        shard_rates.append(n / t.seconds)
    one = pair.candidate.median_rate
    two = statistics.median(shard_rates)
    result.metrics += [
        Metric(
            "catch-up while emit_many ingests", statistics.median(r for r, _ in live), "events/s"
        ),
        Metric("lag after the last commit", statistics.median(lag for _, lag in live), "s"),
        Metric.against("project --once, 2 shards side by side", two, "events/s", two / one, None),
    ]
    result.series["catch-up while ingesting"] = {
        "rates": [r for r, _ in live],
        "lags_s": [lag for _, lag in live],
    }
    result.series["2 shards"] = {"rates": shard_rates}
    scenario1 = ctx.cache.get("ingest_rate")
    if scenario1:
        result.notes.append(
            f"vs scenario 1's emit_many median ({scenario1:,.0f}/s): "
            f"{pair.candidate.median_rate / scenario1:.2f}x"
        )
    ctx.databases.drop(url)
