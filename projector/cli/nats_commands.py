"""`projector consume` and `projector nats init`: the JetStream side of the command line.

`register(subparsers)` adds the commands to the main parser; each sets
``handler(args, db) -> int`` (an async function) and ``needs_db``. The NATS options default to
:func:`projector.settings.settings` (``PROJECTOR_NATS_URL``, ``PROJECTOR_NATS_STREAM``,
``PROJECTOR_NATS_SUBJECT_PREFIX``, ``PROJECTOR_NATS_DURABLE``); errors from NATS reach the user
through :func:`projector.jetstream.translate_nats` as the project's errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
from typing import Any

from .. import gctune, migrate
from ..bridge import Bridge, BridgeConfig, BridgeStats
from ..health import Readiness, readiness
from ..jetstream import StreamLimits, connect, ensure_stream, stream_differences
from ..metrics import ConsumeMetrics
from ..redact import redact
from ..settings import Settings, settings
from . import options
from .monitoring import add_monitoring_options, progress_logging, serving

__all__ = ["register"]

_DEFAULT_LIMITS = StreamLimits()


def _add_nats_options(parser: argparse.ArgumentParser, config: Settings) -> None:
    parser.add_argument(
        "--nats-url",
        default=config.nats_url,
        # The default as --help shows it: a password in PROJECTOR_NATS_URL stays out of it.
        help="NATS server, or several separated by commas, each with its scheme (a cluster's "
        "nodes: nats://a:4222,nats://b:4222) (env "
        "PROJECTOR_NATS_URL; default " + redact(config.nats_url).replace("%", "%%") + ")",
    )
    parser.add_argument(
        "--stream",
        default=config.nats_stream,
        help="JetStream stream (env PROJECTOR_NATS_STREAM; default %(default)s)",
    )
    parser.add_argument(
        "--subject-prefix",
        default=config.nats_subject_prefix,
        help="events are published to <prefix>.<execution id> (env "
        "PROJECTOR_NATS_SUBJECT_PREFIX; default %(default)s)",
    )


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `consume` and `nats init` to the `projector` command line."""
    config = settings()
    consume = subparsers.add_parser(
        "consume",
        help="store events from NATS JetStream in PostgreSQL (the bridge)",
        description="Fetch events from a durable JetStream pull consumer and store them with the "
        "idempotent PostgreSQL sink; each message is acknowledged after its event is committed. "
        "Run several to share the work. SIGINT/SIGTERM: finish the batch in flight and exit 0. "
        "Logs progress every --log-interval seconds; with --metrics-address serves Prometheus "
        "/metrics, /healthz and /readyz (ready: database answers, schema at head, JetStream lag "
        "at most --ready-max-lag seconds).",
    )
    _add_nats_options(consume, config)
    consume.add_argument(
        "--durable",
        default=config.nats_durable,
        help="durable consumer name, shared by all bridges (env PROJECTOR_NATS_DURABLE; "
        "default %(default)s)",
    )
    consume.add_argument(
        "--batch",
        type=options.positive_int,
        default=2000,
        metavar="N",
        help="messages per fetch and transaction (default 2000)",
    )
    consume.add_argument(
        "--in-flight",
        type=options.positive_int,
        metavar="N",
        default=2,
        help="batches written at once, so validation overlaps the database's work (default 2)",
    )
    consume.add_argument(
        "--ack-wait",
        type=options.jetstream_seconds,
        metavar="SECONDS",
        default=30.0,
        help="seconds before an unacknowledged message is redelivered; used when this bridge "
        "creates the consumer (default 30)",
    )
    consume.add_argument(
        "--db-retry-for",
        type=options.seconds_or_zero,
        metavar="SECONDS",
        default=60.0,
        help="seconds to retry a batch while PostgreSQL is unavailable before naking it and "
        "backing off (default 60)",
    )
    add_monitoring_options(consume, config)
    consume.add_argument(
        "--until-empty",
        action="store_true",
        help="exit once the consumer has nothing pending or unacknowledged: 0, or 1 when a "
        "message was rejected (kept in noetl.event_rejected) or conflicting (a reused event id "
        "with other content: logged, the stored row kept); a signal still exits 0",
    )
    consume.add_argument(
        "--create-stream",
        action="store_true",
        help="create the stream with the default limits when it is missing",
    )
    consume.add_argument("--json", action="store_true", help="print a JSON summary on exit")
    consume.set_defaults(handler=consume_command, needs_db=True)

    nats = subparsers.add_parser("nats", help="NATS JetStream set-up")
    nats_sub = nats.add_subparsers(dest="nats_command", required=True)
    init = nats_sub.add_parser(
        "init",
        help="create the events stream (file storage, documented limits)",
        description="Create the stream over <subject-prefix>.> with file storage, limits "
        "retention (upstream noetl's consumers can read the same subjects beside the bridge) and "
        "discard=new. An existing stream is left unchanged; when its configuration differs, "
        "what differs is printed and the exit status is 1.",
    )
    _add_nats_options(init, config)
    init.add_argument(
        "--max-age",
        type=options.jetstream_seconds_or_zero,
        metavar="SECONDS",
        default=_DEFAULT_LIMITS.max_age,
        help="seconds an unconsumed event is kept, 0 for no limit (default 604800, 7 days)",
    )
    init.add_argument(
        "--max-bytes",
        type=options.limit_or_none,
        metavar="BYTES",
        default=_DEFAULT_LIMITS.max_bytes,
        help="stream size limit; publishes are refused beyond it, -1 for none (default 1 GiB)",
    )
    init.add_argument(
        "--duplicate-window",
        type=options.jetstream_seconds,
        metavar="SECONDS",
        default=_DEFAULT_LIMITS.duplicate_window,
        help="seconds JetStream drops re-published event ids (default 120)",
    )
    init.add_argument("--json", action="store_true", help="print the outcome as JSON")
    init.set_defaults(handler=nats_init_command, needs_db=False)


async def consume_command(args: argparse.Namespace, db: str) -> int:
    """Run the bridge until a signal (or `--until-empty`); 0 on a clean stop, 1 after a drain
    that rejected or found conflicting messages."""
    progress_logging("projector.bridge")
    # The counters are read from the bridge's stats when Prometheus scrapes.
    metrics = ConsumeMetrics(lambda: bridge.stats)
    bridge = Bridge(
        db,
        BridgeConfig(
            nats_url=args.nats_url,
            stream=args.stream,
            subject_prefix=args.subject_prefix,
            durable=args.durable,
            batch=args.batch,
            in_flight=args.in_flight,
            log_interval=args.log_interval,
            ack_wait=args.ack_wait,
            db_retry_for=args.db_retry_for,
            until_empty=args.until_empty,
            create_stream=args.create_stream,
        ),
        on_batch=metrics.on_batch,
    )
    head = migrate.head()

    async def lag_now(conn: Any) -> tuple[float, dict[str, Any]]:
        return metrics.lag_seconds(), {
            "nats_pending": metrics.pending(),
            "nats_outstanding": metrics.outstanding(),
        }

    async def ready() -> Readiness:
        return await readiness(db, head, args.ready_max_lag, lag_now)

    # While it runs, this command only moves events: the collector need not walk what start-up
    # loaded.
    with gctune.tuned():
        async with serving(args.metrics_address, metrics.registry, ready):
            stats = await _consume(bridge)
    if args.json:
        print(json.dumps(stats.summary()), flush=True)
    # A drain (`--until-empty`) that ran until nothing was left reports what `ingest` reports: 1
    # when anything was rejected or conflicting (acknowledged, everything valid stored). Stopped
    # by a signal, it exits 0 like the service: its rejections are in the log, the metrics and
    # noetl.event_rejected.
    if args.until_empty and not bridge.stopping and (stats.rejected or stats.conflicts):
        return 1
    return 0


async def _consume(bridge: Bridge) -> BridgeStats:
    """Run `bridge` with SIGINT/SIGTERM asking it to stop (a second one cancels)."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()

    def on_signal(signum: int) -> None:
        if bridge.stopping and task is not None:
            # A second signal: give up on the batch in flight (it will be redelivered).
            task.cancel()
            return
        logging.getLogger(__name__).info(
            "%s: finishing the batch in flight, then exiting", signal.Signals(signum).name
        )
        bridge.stop()

    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await bridge.run()
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


async def nats_init_command(args: argparse.Namespace, db: str | None = None) -> int:
    """Create the stream unless it exists; print what happened, and how an existing stream
    differs from what would have been created (exit status 1 then; it is left unchanged)."""
    limits = StreamLimits(
        max_age=args.max_age, max_bytes=args.max_bytes, duplicate_window=args.duplicate_window
    )
    nc = await connect(args.nats_url, name="noetl-projector-init")
    try:
        js = nc.jetstream()
        created = await ensure_stream(js, args.stream, args.subject_prefix, limits)
        differences = (
            []
            if created
            else await stream_differences(js, args.stream, args.subject_prefix, limits)
        )
    finally:
        with contextlib.suppress(Exception):  # the stream is there (or the error is raised)
            await nc.close()
    subjects = f"{args.subject_prefix}.>"
    if args.json:
        print(
            json.dumps(
                {
                    "stream": args.stream,
                    "subjects": subjects,
                    "created": created,
                    "differences": differences,
                }
            )
        )
    else:
        state = "created" if created else "already exists (left unchanged)"
        print(f"stream {args.stream} over {subjects}: {state}")
        for line in differences:
            print(f"  differs: {line}")
    return 1 if differences else 0
