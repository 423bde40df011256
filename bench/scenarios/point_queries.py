"""Scenario 7: point queries over the generated history (10 million events in a full run).

Latencies (p50/p99) of: `noetl.step_status` (the exact view) and `noetl.step_state` (the projected
table) for one random execution; the 50 newest executions as `projector executions` reads them
and straight from the `noetl.execution_status` view; and the history questions of
docs/cookbook.md (read from that file, so the figures are those of the queries users copy).
The views read the state tables for what is projected (migration 0006): the state is rebuilt
first unless the projection is already caught up. Queries alternate; one
`EXPLAIN (ANALYZE, BUFFERS)` of each goes into the report.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ..generate import BASE_EXECUTION
from ..runner import Context, Metric, ScenarioResult, Timer, percentile
from .history import big_history

ID, KEY, TITLE = 7, "point_queries", "Point queries at scale"

STEP_STATUS = "SELECT * FROM noetl.step_status WHERE execution_id = %s"
STEP_STATE = "SELECT * FROM noetl.step_state WHERE execution_id = %s"
NEWEST_VIEW = "SELECT * FROM noetl.execution_status ORDER BY started_at DESC LIMIT 50"
COOKBOOK = Path(__file__).resolve().parents[2] / "docs" / "cookbook.md"
#: A cookbook query must answer within this at 10M events (issue 15).
COOKBOOK_TARGET_MS = 100.0


def cookbook_queries(path: Path = COOKBOOK) -> dict[str, str]:
    """The ```sql blocks of docs/cookbook.md by the title of their section."""
    out: dict[str, str] = {}
    title = ""
    for block in re.split(r"^(## .*)$", path.read_text(encoding="utf-8"), flags=re.M):
        if block.startswith("## "):
            title = block[3:].strip()
            continue
        for sql_text in re.findall(r"```sql\n(.*?)```", block, flags=re.S):
            out[title] = sql_text.strip().rstrip(";")
    return out


async def _caught_up(url: str) -> bool:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT noetl.projection_position() IS NOT NULL")
        row = await cur.fetchone()
        return bool(row and row[0])


async def run(ctx: Context, result: ScenarioResult) -> None:
    from projector.projection import connect, rebuild
    from projector.queries import query

    executions_query = query("readmodel.executions")

    url, executions, _ = await big_history(ctx)
    if not ctx.cache.get("big_rebuilt") and not await _caught_up(url):
        conn = await connect(url)
        try:
            with Timer() as t:
                await rebuild(conn)
        finally:
            await conn.close()
        ctx.cache["big_rebuilt"] = True
        ctx.log(f"rebuilt the state tables first ({t.seconds:.0f} s)")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        # What autovacuum does soon after a rebuild: statistics, and the visibility map that
        # index-only scans need.
        await conn.execute("VACUUM ANALYZE noetl.step_state, noetl.execution_state")
    samples = 20 if ctx.quick else 300
    budget_ms = (2 if ctx.quick else 60) * 1000.0  # per query: slow ones stop early
    rng = random.Random(5)
    newest = {"status": None, "limit": 50, "stalled": None}

    def one_execution() -> tuple[str]:
        return (str(BASE_EXECUTION + rng.randrange(executions)),)

    queries: dict[str, tuple[str, Callable[[], Any], int]] = {
        "step_status, one execution": (STEP_STATUS, one_execution, samples),
        "step_state, one execution": (STEP_STATE, one_execution, samples),
        "50 newest, as `projector executions`": (executions_query, lambda: newest, samples),
        "50 newest, execution_status view": (NEWEST_VIEW, lambda: None, samples),
    }
    for title, text in cookbook_queries().items():
        queries[f"cookbook: {title}"] = (text, lambda: None, samples)
    result.params = {"executions": executions, "samples": samples}
    latencies: dict[str, list[float]] = {name: [] for name in queries}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("SET statement_timeout = '300s'")

        async def timed(query: str, params: Any) -> float:
            with Timer() as t:
                cur = await conn.execute(query, params)
                await cur.fetchall()
            return t.seconds * 1000

        total = samples * len(queries)
        with ctx.progress(TITLE, total) as tick:
            for i in range(samples):
                for name, (query, params, count) in queries.items():
                    spent = sum(latencies[name])
                    if i < count and (not latencies[name] or spent < budget_ms):
                        latencies[name].append(await timed(query, params()))
                        tick(f"{name} {i + 1}/{count}")
        answered = []
        for name, (query, params, _) in queries.items():
            explain = "EXPLAIN " if ctx.quick else "EXPLAIN (ANALYZE, BUFFERS) "
            cur = await conn.execute(explain + query, params())
            result.plans[name] = "\n".join(str(r[0]) for r in await cur.fetchall())
            cur = await conn.execute(query, params())
            answered.append(f"{name}: {len(await cur.fetchall())}")
        result.notes.append("rows answered: " + ", ".join(answered))
        result.notes.append(
            "samples per query (slow queries stop after "
            f"{budget_ms / 1000:.0f} s): "
            + ", ".join(f"{name}: {len(v)}" for name, v in latencies.items())
        )
    result.series = {name: {"latencies_ms": values} for name, values in latencies.items()}
    for name, values in latencies.items():
        result.metrics.append(Metric(f"{name} p50", percentile(values, 50), "ms"))
        result.metrics.append(Metric(f"{name} p99", percentile(values, 99), "ms"))
