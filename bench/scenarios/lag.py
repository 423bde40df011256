"""Scenario 6: live lag, the projector running while the sink ingests at full speed.

The projector is `Projector.run` (what `projector project` runs) in a separate process,
`python -m bench.projector_child`; the run starts once it reports ready.

The main process ingests fresh events with `emit_many` for `lag_seconds`. After each call returns
(every event of it committed), the last step event of the call becomes a marker with its commit
time. A poller thread (its own connection) looks the markers up in `noetl.step_state` every
`POLL` seconds; a marker is visible once its step's `last_event_at` reached the marker's
`created_at`. Lag = start of the poll that first saw it - the time its `emit_many` returned. The
resolution is the poll interval (plus GIL hand-over, the poller shares the process with the sink).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading
import time
from datetime import datetime

import psycopg

from ..events import fresh_events
from ..runner import Context, Metric, ScenarioResult, percentile
from .common import sink

ID, KEY, TITLE = 6, "lag", "Live lag"
POLL = 0.01
WINDOW = 4_000  # events per emit_many call (two lanes of 2,000)
LOOKUP = (
    "SELECT k.execution_id, k.step FROM unnest(%s::text[], %s::text[], %s::timestamptz[])"
    " AS k(execution_id, step, created_at)"
    " JOIN noetl.step_state s ON s.execution_id = k.execution_id AND s.step = k.step"
    " AND s.last_event_at >= k.created_at"
)


class Poller(threading.Thread):
    """Finds markers in noetl.step_state; records when each became visible."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.pending: dict[tuple[str, str], tuple[datetime, float]] = {}
        self.lags: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def add(self, execution_id: str, step: str, created_at: datetime, committed: float) -> None:
        with self.lock:
            self.pending[(execution_id, step)] = (created_at, committed)

    def run(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self.stop.is_set():
                    with self.lock:
                        keys = list(self.pending.items())
                    if keys:
                        started = time.perf_counter()
                        rows = conn.execute(
                            LOOKUP,
                            (
                                [k[0][0] for k in keys],
                                [k[0][1] for k in keys],
                                [k[1][0] for k in keys],
                            ),
                        ).fetchall()
                        with self.lock:
                            for execution_id, step in rows:
                                _, committed = self.pending.pop((execution_id, step))
                                self.lags.append(max(started - committed, 0.0) * 1000)
                    time.sleep(POLL)
        except BaseException as exc:  # reported by the scenario
            self.error = exc


async def run(ctx: Context, result: ScenarioResult) -> None:
    url = ctx.databases.fresh(KEY)
    seconds = ctx.sizes.lag_seconds
    result.params = {"seconds": seconds, "events_per_call": WINDOW, "poll_interval_s": POLL}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.projector_child",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready = await asyncio.wait_for(proc.stdout.readline(), 60)
    if not ready.startswith(b"ready"):
        raise RuntimeError("the projector process did not start")
    await asyncio.sleep(0.5)  # let it connect and LISTEN
    poller = Poller(url)
    poller.start()
    drain = 10 if ctx.quick else 60
    ingested = 0
    try:
        ticks = max(1, int(seconds))
        with ctx.progress(TITLE, ticks + 1) as tick:
            async with sink(url) as s:
                t0 = time.perf_counter()
                next_tick = 1
                while (elapsed := time.perf_counter() - t0) < seconds:
                    events = fresh_events(WINDOW)
                    await s.emit_many(events)
                    committed = time.perf_counter()
                    ingested += len(events)
                    marker = next(e for e in reversed(events) if e.step.startswith("step_"))
                    poller.add(marker.execution_id, marker.step, marker.created_at, committed)
                    if elapsed >= next_tick:
                        tick(f"{ingested:,} events, {len(poller.lags)} markers seen")
                        next_tick += 1
                ingest_seconds = time.perf_counter() - t0
            for _ in range(drain * 20):  # wait up to `drain` seconds for the last markers
                if not poller.pending or poller.error is not None:
                    break
                await asyncio.sleep(0.05)
            tick("drained")
    finally:
        poller.stop.set()
        poller.join(5)
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
    if poller.error is not None:
        raise poller.error
    unseen: list[float] = []
    if poller.pending:
        # Not visible after the drain: censored, counted at their age now (a lower bound).
        now = time.perf_counter()
        unseen = [(now - committed) * 1000 for _, committed in poller.pending.values()]
        result.notes.append(
            f"{len(unseen)} of {len(unseen) + len(poller.lags)} markers were still not visible "
            f"{drain} s after ingest stopped: the projector did not keep up. Their lag is counted "
            "as their age when the scenario gave up (a lower bound), so the percentiles are too."
        )
    lags = poller.lags + unseen
    result.series = {"lag": {"latencies_ms": lags, "unseen": len(unseen)}}
    result.metrics = [
        Metric("ingest rate with the projector running", ingested / ingest_seconds, "events/s"),
        Metric("lag p50", percentile(lags, 50), "ms"),
        Metric("lag p99", percentile(lags, 99), "ms"),
        Metric("lag max", max(lags), "ms"),
        Metric("markers never visible (censored)", len(unseen), "events"),
        Metric(
            "lag p50, first 10% of markers", percentile(lags[: max(1, len(lags) // 10)], 50), "ms"
        ),
        Metric(
            "lag p50, last 10% of markers", percentile(lags[-max(1, len(lags) // 10) :], 50), "ms"
        ),
    ]
    rate1 = ctx.cache.get("ingest_rate")
    if rate1:
        result.metrics[0].ratio = ingested / ingest_seconds / rate1
        result.metrics[0].note = "ratio: vs scenario 1's emit_many"
    result.notes.append(
        f"{ingested:,} events ingested in {ingest_seconds:.1f} s; {len(lags)} markers"
    )
    ctx.databases.drop(url)
