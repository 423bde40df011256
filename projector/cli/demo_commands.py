"""`projector demo`: migrate, ingest the bundled sample executions, show what was stored."""

from __future__ import annotations

import argparse
import asyncio
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from rich.table import Table

from .. import migrate, readmodel
from ..envelope import ExecutorEvent
from ..ingest import ingest
from ..pgsink import PostgresEventSink
from ..projection import connect
from .safe import text
from .status_commands import output_console, print_status_tables

SAMPLES = ("success", "retried", "failed")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="migrate, ingest three sample executions, print their events and step status",
        description="Migrate the database, ingest the bundled samples (a successful run, a run "
        "with a retried step, a failed run; written in the Rust seed's, the later crate's and "
        "the Python producer's spellings), print each execution's events and then the status of "
        "every step. Safe to repeat: the second run stores nothing new.",
    )
    p.set_defaults(handler=demo)


def _sample(name: str) -> Traversable:
    return resources.files("projector.samples") / f"{name}.ndjson"


def _execution_ids() -> list[str]:
    """The executions of the samples, as stored (integer ids as decimal text), sorted."""
    ids = set()
    for name in SAMPLES:
        for line in _sample(name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                ids.add(ExecutorEvent.parse_json(line).execution_id)
    return sorted(ids)


async def demo(args: argparse.Namespace, db: str) -> int:
    console = output_console()
    await asyncio.to_thread(migrate.upgrade, db)
    console.print(f"[bold]schema[/bold] at revision {migrate.head()}")
    async with PostgresEventSink(db) as sink:
        for name in SAMPLES:
            with _sample(name).open("rb") as stream:
                report = await ingest(sink, stream, f"samples/{name}.ndjson")
            counts = ", ".join(f"{v} {k}" for k, v in report.counts().items())
            console.print(f"[bold]ingest[/bold] samples/{name}.ndjson: {counts}", soft_wrap=True)
    execution_ids = _execution_ids()
    async with await connect(db) as conn:
        for execution_id in execution_ids:
            table = Table(title=text(f"execution {execution_id}"), title_justify="left")
            for column in ("created_at", "event_type", "step", "status", "worker"):
                table.add_column(column)
            for e in await readmodel.history(conn, execution_id):
                table.add_row(
                    e.created_at.strftime("%H:%M:%S.%f")[:-3],
                    text(e.event_type),
                    text(e.step),
                    text(e.status),
                    text(e.worker_id),
                )
            console.print(table)
    console.print("[bold]step status[/bold] (from the noetl.step_status view)")
    await print_status_tables(db, execution_ids, console)
    return 0
