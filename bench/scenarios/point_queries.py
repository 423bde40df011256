"""Scenario 7: point queries over the generated history (10 million events in a full run).

Latencies (p50/p99) of: `noetl.step_status` (the exact view) and `noetl.step_state` (the projected
table) for one random execution; the 50 newest executions as `projector executions` reads them
(newest `execution_state` rows re-checked against the view) and straight from the
`noetl.execution_status` view (a full aggregation, so only a few samples). Queries alternate;
one `EXPLAIN (ANALYZE, BUFFERS)` of each goes into the report.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import psycopg

from ..generate import BASE_EXECUTION
from ..runner import Context, Metric, ScenarioResult, Timer, percentile
from .history import big_history

ID, KEY, TITLE = 7, "point_queries", "Point queries at scale"

STEP_STATUS = "SELECT * FROM noetl.step_status WHERE execution_id = %s"
STEP_STATE = "SELECT * FROM noetl.step_state WHERE execution_id = %s"
NEWEST_VIEW = "SELECT * FROM noetl.execution_status ORDER BY started_at DESC LIMIT 50"


async def run(ctx: Context, result: ScenarioResult) -> None:
    from projector.projection import connect, rebuild
    from projector.queries import query

    executions_query = query("readmodel.executions")

    url, executions, _ = await big_history(ctx)
    if not ctx.cache.get("big_rebuilt"):
        conn = await connect(url)
        try:
            with Timer() as t:
                await rebuild(conn)
        finally:
            await conn.close()
        ctx.cache["big_rebuilt"] = True
        ctx.log(f"rebuilt the state tables first ({t.seconds:.0f} s)")
    samples = 20 if ctx.quick else 300
    view_samples = 1 if ctx.quick else 3
    budget_ms = (2 if ctx.quick else 60) * 1000.0  # per query: slow ones stop early
    rng = random.Random(5)
    newest = {"status": None, "limit": 50, "stalled": None}

    def one_execution() -> tuple[str]:
        return (str(BASE_EXECUTION + rng.randrange(executions)),)

    queries: dict[str, tuple[str, Callable[[], Any], int]] = {
        "step_status, one execution": (STEP_STATUS, one_execution, samples),
        "step_state, one execution": (STEP_STATE, one_execution, samples),
        "50 newest, as `projector executions`": (executions_query, lambda: newest, samples),
        "50 newest, execution_status view": (NEWEST_VIEW, lambda: None, view_samples),
    }
    result.params = {"executions": executions, "samples": samples, "view_samples": view_samples}
    latencies: dict[str, list[float]] = {name: [] for name in queries}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SET statement_timeout = '300s'")

        async def timed(query: str, params: Any) -> float:
            with Timer() as t:
                cur = await conn.execute(query, params)
                await cur.fetchall()
            return t.seconds * 1000

        total = samples * 3 + view_samples
        with ctx.progress(TITLE, total) as tick:
            for i in range(samples):
                for name, (query, params, count) in queries.items():
                    spent = sum(latencies[name])
                    if i < count and (not latencies[name] or spent < budget_ms):
                        latencies[name].append(await timed(query, params()))
                        tick(f"{name} {i + 1}/{count}")
        for name, (query, params, _) in queries.items():
            explain = "EXPLAIN " if ctx.quick else "EXPLAIN (ANALYZE, BUFFERS) "
            cur = await conn.execute(explain + query, params())
            result.plans[name] = "\n".join(str(r[0]) for r in await cur.fetchall())
        result.notes.append(
            "samples per query (slow queries stop after "
            f"{budget_ms / 1000:.0f} s): "
            + ", ".join(f"{name}: {len(v)}" for name, v in latencies.items())
        )
    result.series = {name: {"latencies_ms": values} for name, values in latencies.items()}
    for name, values in latencies.items():
        result.metrics.append(Metric(f"{name} p50", percentile(values, 50), "ms"))
        result.metrics.append(Metric(f"{name} p99", percentile(values, 99), "ms"))
