"""The large generated history that scenarios 8 (rebuild) and 7 (point queries) share."""

from __future__ import annotations

import asyncio

from ..generate import EVENTS_PER_EXECUTION, generate
from ..runner import Context, Timer


async def big_history(ctx: Context) -> tuple[str, int, float]:
    """(url, executions, generation seconds) of the scratch database holding the big history."""
    cached = ctx.cache.get("big")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    url = ctx.databases.fresh("history")
    n = ctx.sizes.big_events
    chunk = 20_000
    steps = max(1, -(-(n // EVENTS_PER_EXECUTION) // chunk))
    with ctx.progress(f"generating {n:,} events server-side", steps) as tick, Timer() as t:
        executions = await asyncio.to_thread(generate, url, n, chunk_executions=chunk, tick=tick)
    ctx.cache["big"] = (url, executions, t.seconds)
    ctx.log(
        f"generated ~{executions * EVENTS_PER_EXECUTION:,} events ({executions:,} executions) "
        f"in {t.seconds:.0f} s, VACUUM ANALYZE included"
    )
    return url, executions, t.seconds
