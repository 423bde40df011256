"""Scenario 9: peak RSS of a process emitting many events through the sink while the database is
artificially slow.

Slowness: a statement-level `BEFORE INSERT` trigger on `noetl.event` in this scenario's scratch
database sleeps `memory_delay` seconds (`pg_sleep`) once per write statement, so every batch
(COPY) takes that much longer and the sink falls far behind its producers; rows are unchanged.
The emitter is a child process (`python -m bench.memory_child`) measuring its own peak RSS, run
with N/10 and N events: if memory is bounded, both peaks are about the same. The bound: the sink
holds at most `max_pending` queued events plus `flushers` x `batch_size` being written, plus the
producer's own waiting callers (one event each).
"""

from __future__ import annotations

import asyncio
import json
import sys

import psycopg

from ..runner import Context, Metric, Sample, ScenarioResult, Variant, measure

ID, KEY, TITLE = 9, "memory", "Memory under a slow database"

SLOW = """
CREATE FUNCTION noetl.bench_slow() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_sleep(current_setting('bench.delay')::float8);
    RETURN NULL;
END
$fn$;
CREATE TRIGGER bench_slow BEFORE INSERT ON noetl.event
    FOR EACH STATEMENT EXECUTE FUNCTION noetl.bench_slow();
"""
PRODUCERS = 15_000  # > max_pending (10,000) + 2 flushers x 2,000: the queue stays full
MIB = 2**20


async def _child(url: str, n: int) -> dict[str, float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.memory_child",
        url,
        str(n),
        str(PRODUCERS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}): {err.decode()[-2000:]}")
    data: dict[str, float] = json.loads(out.decode().strip().splitlines()[-1])
    return data


async def run(ctx: Context, result: ScenarioResult) -> None:
    url = ctx.databases.fresh(KEY)
    n, delay = ctx.sizes.memory_events, ctx.sizes.memory_delay
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SLOW)
        dbname = conn.info.dbname
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET bench.delay = {}").format(
                psycopg.sql.Identifier(dbname), psycopg.sql.Literal(str(delay))
            )
        )
    result.params = {
        "events": n,
        "small_events": n // 10,
        "producers": PRODUCERS,
        "delay_per_write_statement_s": delay,
    }

    def variant(events: int) -> Variant:
        async def go(_: int) -> Sample:
            data = await _child(url, events)
            return Sample(events, float(data["seconds"]), data)

        return go

    with ctx.progress(TITLE, 2) as tick:
        series = await measure(
            {f"{n // 10:,} events": variant(n // 10), f"{n:,} events": variant(n)}, 1, tick=tick
        )
    small, big = series[f"{n // 10:,} events"], series[f"{n:,} events"]
    result.add_series(small, big)
    s, b = small.samples[0].extra, big.samples[0].extra
    held = b["max_pending"] + b["flushers"] * b["batch_size"] + PRODUCERS
    per_event = max(b["peak_rss_bytes"] - b["rss_open_bytes"], 0) / held
    result.metrics = [
        Metric(f"peak RSS, {n:,} events", b["peak_rss_bytes"] / MIB, "MiB"),
        Metric(f"peak RSS, {n // 10:,} events", s["peak_rss_bytes"] / MIB, "MiB"),
        Metric("RSS with the sink open, before emitting", b["rss_open_bytes"] / MIB, "MiB"),
        Metric(
            "growth N vs N/10",
            b["peak_rss_bytes"] / s["peak_rss_bytes"],
            "x",
            note="about 1 when bounded",
        ),
        Metric("largest queue seen", b["max_queue"], "events"),
        Metric("throughput while slowed", big.median_rate, "events/s"),
    ]
    result.notes.append(
        f"Bound: at most {b['max_pending']:,} queued + {b['flushers']} x {b['batch_size']:,} in "
        f"flight + {PRODUCERS:,} waiting callers = {held:,} events in the process, measured "
        f"~{per_event:,.0f} bytes each above the open sink's RSS: peak <= "
        f"{(b['rss_open_bytes'] + held * per_event) / MIB:,.0f} MiB whatever the number of events."
    )
    ctx.databases.drop(url)
