"""The large generated history that scenarios 8 (rebuild) and 7 (point queries) share."""

from __future__ import annotations

import asyncio

from ..generate import EVENTS_PER_EXECUTION, generate, kept_history, mark_history
from ..runner import Context, Timer


async def big_history(ctx: Context) -> tuple[str, int, float]:
    """(url, executions, generation seconds) of the scratch database holding the big history."""
    cached = ctx.cache.get("big")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    n = ctx.sizes.big_events
    kept = ctx.cache.get("keep_history")
    if kept is not None:
        url, executions = kept_history(ctx.server_url, kept, ctx.databases.template(), n)
        if executions:
            ctx.cache["big"] = (url, executions, 0.0)
            ctx.log(f"reusing the history kept in {kept} ({executions:,} executions)")
            return url, executions, 0.0
    else:
        url = ctx.databases.fresh("history")
    chunk = 20_000
    steps = max(1, -(-(n // EVENTS_PER_EXECUTION) // chunk))
    with ctx.progress(f"generating {n:,} events server-side", steps) as tick, Timer() as t:
        executions = await asyncio.to_thread(generate, url, n, chunk_executions=chunk, tick=tick)
    if kept is not None:
        mark_history(url, n, executions)
    ctx.cache["big"] = (url, executions, t.seconds)
    ctx.log(
        f"generated ~{executions * EVENTS_PER_EXECUTION:,} events ({executions:,} executions) "
        f"in {t.seconds:.0f} s, VACUUM ANALYZE included"
    )
    return url, executions, t.seconds
