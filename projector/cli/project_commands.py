"""`projector project [--once]` and `projector rebuild`.

`project` also keeps the monthly partitions of noetl.event created ahead
(:func:`projector.partitions.upkeep`: at start, then hourly), so no cron job is needed. It logs
its start (database, checkpoint, lag) and then, every ``--log-interval`` seconds, the events
projected, the rate, the checkpoint and the lag (logger ``projector.project``); with
``--metrics-address`` it serves /metrics, /healthz and /readyz (:mod:`projector.health`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from typing import Any, Final

from rich.console import Console

from .. import migrate, partitions
from ..database import describe
from ..errors import ProjectorError
from ..health import Lag, Readiness, probe_connection, projection_lag, readiness
from ..metrics import ProjectMetrics
from ..projection import (
    DEFAULT_NAME,
    REBUILD_WORKERS,
    ChunkResult,
    Projector,
    Shard,
    connect,
    rebuild,
)
from ..settings import settings
from . import options
from .monitoring import add_monitoring_options, progress_logging, serving

__all__ = ["register"]

log = logging.getLogger("projector.project")

#: Seconds between two lag queries while /metrics is served (the gauges are this fresh).
LAG_REFRESH: Final = 5.0


class _Tally:
    """Counts what the projector did (for the progress lines) and feeds the metrics."""

    def __init__(self, metrics: ProjectMetrics) -> None:
        self.metrics = metrics
        self.events = 0
        self.started = time.monotonic()

    def on_chunk(self, result: ChunkResult, seconds: float) -> None:
        self.events += result.events
        self.metrics.on_chunk(result, seconds)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.events / elapsed if elapsed > 0 else 0.0


def _lag_fields(lag: Lag) -> dict[str, Any]:
    return {
        "checkpoint": lag.position,
        "lag_seconds": round(lag.seconds, 3),
        "lag_events": lag.events,
    }


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await stop.wait()


async def _monitor(
    db: str, name: str, tally: _Tally, stop: asyncio.Event, log_interval: float, serving: bool
) -> None:
    """Log progress every `log_interval` seconds (0: never) and, while /metrics is served,
    refresh the lag gauges every :data:`LAG_REFRESH` seconds (or `log_interval`, if shorter).
    Uses a connection of its own."""
    if not serving and log_interval == 0:
        return
    refresh = min(log_interval or LAG_REFRESH, LAG_REFRESH) if serving else log_interval
    next_log = time.monotonic() + log_interval
    conn = None
    try:
        while True:
            await _wait(stop, refresh)
            if stop.is_set():
                return
            lag = None
            try:
                if conn is None or conn.closed:
                    conn = await probe_connection(db)
                lag = await projection_lag(conn, name)
                tally.metrics.set_lag(lag.position, lag.seconds, lag.events)
            except ProjectorError as exc:  # the projector says so itself; the figures wait
                log.debug("lag unavailable: %s", exc)
                if conn is not None:
                    await conn.close()
                conn = None
            if log_interval > 0 and time.monotonic() >= next_log:
                next_log = time.monotonic() + log_interval
                fields = {"events_projected": tally.events, "rate": round(tally.rate(), 1)}
                if lag is None:
                    log.info(
                        "projected %d events (%.1f/s); lag unknown",
                        tally.events,
                        tally.rate(),
                        extra=fields,
                    )
                else:
                    log.info(
                        "projected %d events (%.1f/s); checkpoint %s, lag %.1f s, %d events",
                        tally.events,
                        tally.rate(),
                        lag.position,
                        lag.seconds,
                        lag.events,
                        extra={**fields, **_lag_fields(lag)},
                    )
    finally:
        if conn is not None:
            await conn.close()


def _checkpoint(args: argparse.Namespace) -> str:
    """The checkpoint row this instance moves (its shard's, with --shard): the lag is read there
    (counting the events of every execution at or above it)."""
    shard: Shard | None = args.shard
    return args.name if shard is None else shard.checkpoint_name(args.name)


async def project_command(args: argparse.Namespace, db: str) -> int:
    """Run the projector until SIGINT/SIGTERM (the current transaction finishes), or `--once`."""
    progress_logging("projector.project")
    metrics = ProjectMetrics()
    tally = _Tally(metrics)
    projector = Projector(
        db,
        name=args.name,
        max_events=args.max_events,
        poll_interval=args.poll_interval,
        on_chunk=tally.on_chunk,
        shard=args.shard,
    )
    async with await connect(db) as conn:  # at start; then hourly while it runs
        await partitions.ensure_partitions(conn, args.partitions_ahead)
        lag = await projection_lag(conn, _checkpoint(args))
    metrics.set_lag(lag.position, lag.seconds, lag.events)
    log.info(
        "projector %r on the database %s: checkpoint %s, %d events to project (lag %.1f s)",
        args.name,
        describe(db),
        lag.position,
        lag.events,
        lag.seconds,
        extra={"projection": args.name, "database": describe(db), **_lag_fields(lag)},
    )
    if args.once:
        count = await projector.once()
        log.info("projected %d events", count, extra={"events_projected": count})
        Console(highlight=False).print(f"projected {count} events", markup=False)
        return 0
    head = migrate.head()

    async def lag_now(conn: Any) -> tuple[float, dict[str, Any]]:
        lag = await projection_lag(conn, _checkpoint(args))
        metrics.set_lag(lag.position, lag.seconds, lag.events)
        return lag.seconds, {"lag_events": lag.events, "checkpoint": lag.position}

    async def ready() -> Readiness:
        return await readiness(db, head, args.ready_max_lag, lag_now)

    async with serving(args.metrics_address, metrics.registry, ready) as server:
        await _run(args, db, projector, tally, serving=server is not None)
    return 0


async def _run(
    args: argparse.Namespace, db: str, projector: Projector, tally: _Tally, *, serving: bool
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    upkeep = asyncio.create_task(
        partitions.upkeep(db, args.partitions_ahead, stop, first_after=partitions.UPKEEP_INTERVAL)
    )
    monitor = asyncio.create_task(
        _monitor(db, _checkpoint(args), tally, stop, args.log_interval, serving)
    )
    try:
        await projector.run(stop)
    finally:
        stop.set()
        await upkeep
        await monitor
        for sig in installed:
            loop.remove_signal_handler(sig)
    log.info(
        "projector stopped after projecting %d events",
        tally.events,
        extra={"events_projected": tally.events},
    )


async def rebuild_command(args: argparse.Namespace, db: str) -> int:
    """Recompute step_state and execution_state from the whole event log."""
    async with await connect(db) as conn:
        result = await rebuild(conn, name=args.name, workers=args.workers)
    Console(highlight=False).print(
        f"rebuilt {result.steps} steps of {result.executions} executions", markup=False
    )
    return 0


def _shard(text: str) -> Shard:
    try:
        return Shard.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `project` and `rebuild` to the command line."""
    p = subparsers.add_parser(
        "project",
        help="keep noetl.step_state / execution_state up to date from the event log",
        description="Project new events into noetl.step_state and noetl.execution_state, "
        "checkpointing in the same transaction. Runs until SIGINT/SIGTERM (finishing the "
        "transaction in progress); wakes on the sink's NOTIFY, polls as a fallback. Several "
        "instances may run: an advisory lock lets one work at a time, or with --shard K/N "
        "N instances share the executions, each with its own checkpoint. Reads rows by "
        "transaction-id fence, so a long-open transaction anywhere on the server delays "
        "projection (never loses events). Also keeps the monthly partitions of noetl.event "
        "created ahead (--partitions-ahead), at start and then hourly. Logs its start and, "
        "every --log-interval seconds, progress and lag; with --metrics-address serves "
        "Prometheus /metrics, /healthz and /readyz (ready: database answers, schema at head, "
        "lag at most --ready-max-lag seconds).",
    )
    p.add_argument("--once", action="store_true", help="catch up, then exit (serves no metrics)")
    add_monitoring_options(p, settings())
    p.add_argument(
        "--poll-interval",
        type=options.seconds,
        default=1.0,
        help="seconds between polls when no NOTIFY arrives (default 1)",
    )
    p.add_argument(
        "--max-events",
        type=options.positive_int,
        default=10_000,
        help="events per transaction (default 10000)",
    )
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="K/N",
        help="project only the executions of shard K of N (hashtext(execution_id) modulo N), "
        "with a checkpoint of its own: run N instances, 0/N to N-1/N, side by side",
    )
    p.add_argument(
        "--partitions-ahead",
        type=options.non_negative_int,
        metavar="N",
        default=3,
        help="keep the monthly partitions of noetl.event created for this month and the N "
        "after it, at start and then hourly (default 3)",
    )
    p.add_argument("--name", default=DEFAULT_NAME, help=argparse.SUPPRESS)
    p.set_defaults(handler=project_command)

    p = subparsers.add_parser(
        "rebuild",
        help="recompute the state tables from the event log",
        description="Recompute noetl.step_state and noetl.execution_state from noetl.event with "
        "set-based SQL in one transaction (readers see the old rows until it commits) and move "
        "the projector's checkpoint. Use after changing the rules or restoring a backup.",
    )
    p.add_argument(
        "--workers",
        type=options.positive_int,
        default=REBUILD_WORKERS,
        metavar="N",
        help="connections that fold a share of the executions each, side by side, in the "
        "rebuild's snapshot; the rows are written by the rebuild's one transaction "
        f"(default {REBUILD_WORKERS}; at most one per core of the server helps)",
    )
    p.add_argument("--name", default=DEFAULT_NAME, help=argparse.SUPPRESS)
    p.set_defaults(handler=rebuild_command)
