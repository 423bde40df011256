"""Scenario 8: `projector rebuild` (projector.projection.rebuild) over the generated history.

Baseline: the least work any rebuild must do, one pass that reads every event and groups it by
execution and step (`SELECT execution_id, step, count(*) ... GROUP BY 1, 2`), alternated with it.
"""

from __future__ import annotations

import psycopg

from ..runner import Context, Metric, Sample, ScenarioResult, Timer, measure_pair
from .history import big_history

ID, KEY, TITLE = 8, "rebuild", "Rebuild"
SCAN = "SELECT count(*) FROM (SELECT execution_id, step, count(*) FROM noetl.event GROUP BY 1, 2) g"


async def run(ctx: Context, result: ScenarioResult) -> None:
    from projector.projection import connect, rebuild

    url, executions, gen_seconds = await big_history(ctx)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT count(*) FROM noetl.event")).fetchone()
        assert row is not None
        events = int(row[0])
    rounds = 1 if events > 2_000_000 or ctx.quick else ctx.sizes.rounds
    result.params = {"events": events, "executions": executions, "rounds": rounds}

    async def candidate(_: int) -> Sample:
        conn = await connect(url)
        try:
            with Timer() as t:
                r = await rebuild(conn)
        finally:
            await conn.close()
        ctx.cache["big_rebuilt"] = True
        return Sample(events, t.seconds, {"steps": r.steps, "executions": r.executions})

    async def baseline(_: int) -> Sample:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            with Timer() as t:
                await conn.execute(SCAN)
        return Sample(events, t.seconds)

    with ctx.progress(TITLE, 2 * rounds) as tick:
        pair = await measure_pair(
            ("rebuild", candidate), ("scan + GROUP BY", baseline), rounds, tick=tick
        )
    result.add_series(pair.candidate, pair.baseline)
    result.metrics = [
        Metric.against("rebuild", pair.candidate.median_rate, "events/s", pair.ratio, None),
        Metric("rebuild time", pair.candidate.samples[0].seconds, "s"),
        Metric("scan + GROUP BY (floor)", pair.baseline.median_rate, "events/s"),
        Metric("server-side generation", events / gen_seconds, "events/s"),
    ]
    result.notes.append(
        f"{events:,} events, {executions:,} executions, "
        f"{pair.candidate.samples[0].extra['steps']:,} steps rebuilt"
    )
