"""The options of the long-running commands (`project`, `consume`) for metrics, health and
progress logs, and the server they start (:class:`projector.health.HealthServer`)."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from ..health import HealthServer, ReadyCheck
from ..logs import TEXT_FORMAT
from ..settings import Settings
from . import options

__all__ = ["add_monitoring_options", "progress_logging", "serving"]

log = logging.getLogger("projector.health")


def add_monitoring_options(parser: argparse.ArgumentParser, config: Settings) -> None:
    """``--metrics-address``, ``--ready-max-lag`` and ``--log-interval``."""
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        type=options.address,
        default=config.metrics_address,
        help="serve Prometheus /metrics, /healthz and /readyz on HOST:PORT (env "
        "PROJECTOR_METRICS_ADDRESS; default: none; port 0: a free port, logged)",
    )
    parser.add_argument(
        "--ready-max-lag",
        metavar="SECONDS",
        type=options.seconds,
        default=config.ready_max_lag,
        help="/readyz answers 503 when the lag is over SECONDS (env PROJECTOR_READY_MAX_LAG; "
        "default %(default)g)",
    )
    parser.add_argument(
        "--log-interval",
        metavar="SECONDS",
        type=options.seconds_or_zero,
        default=10.0,
        help="seconds between progress log lines on stderr, 0 for none (default 10)",
    )


@contextlib.asynccontextmanager
async def serving(
    address: tuple[str, int] | None, registry: CollectorRegistry, ready: ReadyCheck
) -> AsyncIterator[HealthServer | None]:
    """Serve the endpoints on `address` while the block runs (nothing when it is None)."""
    if address is None:
        yield None
        return
    server = HealthServer(registry, ready)
    await server.start(*address)
    log.info("serving /metrics, /healthz and /readyz on %s", server.url)
    try:
        yield server
    finally:
        await server.close()


def progress_logging(*loggers: str) -> None:
    """Progress lines are the output of a long-running command: show these loggers' INFO records
    (and the served address) even without --verbose."""
    if not logging.getLogger().handlers:  # called from Python, not through `projector`
        logging.basicConfig(stream=sys.stderr, format=TEXT_FORMAT)
    for name in (*loggers, "projector.health"):
        logging.getLogger(name).setLevel(logging.INFO)
