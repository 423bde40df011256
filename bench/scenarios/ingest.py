"""Scenario 1: bulk ingest through `emit_many` vs raw binary COPY of the same rows.

The baseline writes the same rows (same columns, jsonb context, same table and indexes) in the same
batches of 2,000, one transaction each, over one connection. A COPY over two connections is
measured as well and reported beside it.

Every round's events belong to new executions, whose rows the indexes take at their right edge.
A live stream looks different: its executions already have rows. So a second pair measures that,
sink and COPY alike: the first event of every execution is stored beforehand (untimed), the rest
of the events are timed, and their index entries land among the stored ones.

The client's CPU time per event (this process, while the clock runs) is reported for `emit_many`
and the 1-connection COPY: the sink's share of the 2 cores that the raw COPY leaves to the server.
"""

from __future__ import annotations

from statistics import median

from projector.envelope import ExecutorEvent

from ..events import EVENTS_PER_EXECUTION, fresh_events
from ..runner import Context, Metric, Sample, ScenarioResult, Series, measure, median_ratio
from .common import BATCH, timed_copy, timed_emit_many

ID, KEY, TITLE = 1, "ingest", "Bulk ingest"
TARGET = 0.9


def client_cpu(sink: Series, copy: Series) -> list[Metric]:
    """This process's CPU per event while `emit_many` and the raw COPY ran (median of rounds):
    on 2 cores the client's Python work competes with the server's COPY for the same CPUs."""
    out = []
    for label, series in (("emit_many", sink), ("raw COPY, 1 connection", copy)):
        per_event = [s.extra["cpu_seconds"] / s.events * 1e6 for s in series.samples if s.events]
        if per_event:
            out.append(Metric(f"client CPU per event: {label}", median(per_event), "µs"))
    return out


async def run(ctx: Context, result: ScenarioResult) -> None:
    url = ctx.databases.fresh(KEY)
    n, rounds = ctx.sizes.ingest_events, ctx.sizes.rounds
    result.params = {"events_per_round": n, "batch_size": BATCH, "rounds": rounds}

    async def candidate(_: int) -> Sample:
        sample = await timed_emit_many(url, fresh_events(n))
        if sample.extra["inserted"] != n:
            raise AssertionError(f"emit_many inserted {sample.extra['inserted']} of {n}")
        return sample

    async def started_executions() -> list[ExecutorEvent]:
        """n events of executions whose first event is stored already (untimed)."""
        events = fresh_events(n + n // (EVENTS_PER_EXECUTION - 1) + 1)
        await timed_emit_many(url, events[::EVENTS_PER_EXECUTION])
        return [e for i, e in enumerate(events) if i % EVENTS_PER_EXECUTION][:n]

    async def continuing(_: int) -> Sample:
        sample = await timed_emit_many(url, await started_executions())
        if sample.extra["inserted"] != n:
            raise AssertionError(f"emit_many inserted {sample.extra['inserted']} of {n}")
        return sample

    async def continuing_baseline(_: int) -> Sample:
        return await timed_copy(url, await started_executions())

    async def baseline(_: int) -> Sample:
        return await timed_copy(url, fresh_events(n))

    async def baseline2(_: int) -> Sample:
        return await timed_copy(url, fresh_events(n), connections=2)

    # Each pair side by side: the runner rotates the order every round.
    variants = {
        "emit_many": candidate,
        "raw COPY": baseline,
        "emit_many, executions already stored": continuing,
        "raw COPY, executions already stored": continuing_baseline,
        "raw COPY, 2 connections": baseline2,
    }
    with ctx.progress(TITLE, len(variants) * rounds) as tick:
        series = await measure(variants, rounds, tick=tick)
    result.add_series(*series.values())
    sink, copy1, copy2 = series["emit_many"], series["raw COPY"], series["raw COPY, 2 connections"]
    continued = series["emit_many, executions already stored"]
    continued_copy = series["raw COPY, executions already stored"]
    ctx.cache["ingest_rate"] = sink.median_rate
    result.metrics = [
        Metric.against(
            "emit_many", sink.median_rate, "events/s", median_ratio(sink, copy1), TARGET
        ),
        Metric.against(
            "emit_many, executions already stored",
            continued.median_rate,
            "events/s",
            median_ratio(continued, continued_copy),
            TARGET,
        ),
        Metric(
            "raw binary COPY, executions already stored (baseline)",
            continued_copy.median_rate,
            "events/s",
        ),
        Metric("raw binary COPY, 1 connection (baseline)", copy1.median_rate, "events/s"),
        Metric.against(
            "emit_many vs COPY on 2 connections",
            sink.median_rate,
            "events/s",
            median_ratio(sink, copy2),
            None,
        ),
        Metric("raw binary COPY, 2 connections", copy2.median_rate, "events/s"),
        *client_cpu(sink, copy1),
    ]
    ctx.databases.drop(url)
