"""Scenario 8: `projector rebuild` (projector.projection.rebuild) over the generated history.

The rebuild runs as the command does: its fold split between `REBUILD_WORKERS` (2) connections
in its snapshot, its rows written by its one transaction.

Baseline (the floor, issue 15): one pass that reads every column the fold reads (execution_id,
step, event_type, status, created_at, event_id, a field of context and of meta) and writes one
row per (execution, step) into a new logged table (`CREATE TABLE ... AS SELECT ... GROUP BY 1, 2`),
alternated with it. Target: rebuild >= 0.2x of the floor.
"""

from __future__ import annotations

import psycopg

from ..runner import Context, Metric, Sample, ScenarioResult, Timer, measure_pair
from .history import big_history

ID, KEY, TITLE = 8, "rebuild", "Rebuild"
FLOOR = """
CREATE TABLE public.rebuild_floor AS
SELECT execution_id, step, count(*) AS events, min(created_at) AS first_at,
       max(created_at) AS last_at, max(event_type) AS event_type, max(status) AS status,
       max(event_id) AS event_id, max(context ->> 'attempt') AS attempt,
       max(meta ->> 'command_id') AS command_id
FROM noetl.event GROUP BY 1, 2
"""
DROP_FLOOR = "DROP TABLE IF EXISTS public.rebuild_floor"
TARGET = 0.2


async def run(ctx: Context, result: ScenarioResult) -> None:
    from projector.projection import REBUILD_WORKERS, connect, rebuild

    url, executions, gen_seconds = await big_history(ctx)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        row = await (await conn.execute("SELECT count(*) FROM noetl.event")).fetchone()
        assert row is not None
        events = int(row[0])
    rounds = 1 if events > 2_000_000 or ctx.quick else ctx.sizes.rounds
    result.params = {
        "events": events,
        "executions": executions,
        "rounds": rounds,
        "workers": REBUILD_WORKERS,
    }

    async def candidate(_: int) -> Sample:
        conn = await connect(url)
        try:
            with Timer() as t:
                r = await rebuild(conn, workers=REBUILD_WORKERS)
        finally:
            await conn.close()
        ctx.cache["big_rebuilt"] = True
        return Sample(events, t.seconds, {"steps": r.steps, "executions": r.executions})

    async def baseline(_: int) -> Sample:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(DROP_FLOOR)
            with Timer() as t:
                await conn.execute(FLOOR)
            await conn.execute(DROP_FLOOR)
        return Sample(events, t.seconds)

    with ctx.progress(TITLE, 2 * rounds) as tick:
        pair = await measure_pair(
            ("rebuild", candidate),
            ("floor: read the fold's columns, a row per step", baseline),
            rounds,
            tick=tick,
        )
    result.add_series(pair.candidate, pair.baseline)
    result.metrics = [
        Metric.against("rebuild", pair.candidate.median_rate, "events/s", pair.ratio, TARGET),
        Metric("rebuild time", pair.candidate.samples[0].seconds, "s"),
        Metric(
            "floor (fold's columns read, a row per step written)",
            pair.baseline.median_rate,
            "events/s",
        ),
        Metric("floor time", pair.baseline.samples[0].seconds, "s"),
    ]
    if gen_seconds:  # 0 when the history was kept from an earlier run (--keep-history)
        result.metrics.append(Metric("server-side generation", events / gen_seconds, "events/s"))
    result.notes.append(
        f"{events:,} events, {executions:,} executions, "
        f"{pair.candidate.samples[0].extra['steps']:,} steps rebuilt"
    )
