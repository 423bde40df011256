"""`projector project [--once]` and `projector rebuild`.

`project` also keeps the monthly partitions of noetl.event created ahead
(:func:`projector.partitions.upkeep`: at start, then hourly), so no cron job is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from rich.console import Console

from .. import partitions
from ..projection import DEFAULT_NAME, Projector, Shard, connect, rebuild
from . import options

__all__ = ["register"]


async def project_command(args: argparse.Namespace, db: str) -> int:
    """Run the projector until SIGINT/SIGTERM (the current transaction finishes), or `--once`."""
    projector = Projector(
        db,
        name=args.name,
        max_events=args.max_events,
        poll_interval=args.poll_interval,
        shard=args.shard,
    )
    async with await connect(db) as conn:  # at start; then hourly while it runs
        await partitions.ensure_partitions(conn, args.partitions_ahead)
    if args.once:
        count = await projector.once()
        Console(highlight=False).print(f"projected {count} events", markup=False)
        return 0
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
    try:
        await projector.run(stop)
    finally:
        stop.set()
        await upkeep
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 0


async def rebuild_command(args: argparse.Namespace, db: str) -> int:
    """Recompute step_state and execution_state from the whole event log."""
    async with await connect(db) as conn:
        result = await rebuild(conn, name=args.name)
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
        "created ahead (--partitions-ahead), at start and then hourly.",
    )
    p.add_argument("--once", action="store_true", help="catch up, then exit")
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
    p.add_argument("--name", default=DEFAULT_NAME, help=argparse.SUPPRESS)
    p.set_defaults(handler=rebuild_command)
