"""`projector demo`: migrate, ingest the bundled sample executions, show what was stored."""

from __future__ import annotations

import argparse
import asyncio
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

from rich.console import Console
from rich.table import Table

from .. import migrate, readmodel
from ..envelope import ExecutorEvent
from ..ingest import ingest
from ..pgsink import PostgresEventSink
from ..projection import connect
from .safe import escape, text
from .status_commands import output_console, print_status_tables

SAMPLES = ("success", "retried", "failed")
#: The sample execution with a failed attempt and its retry.
RETRIED = "7288213371283718001"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="migrate, ingest three sample executions, print their events and step status",
        description="Migrate the database, ingest the bundled samples (a successful run, a run "
        "with a retried step, a failed run; written in the Rust seed's, the later crate's and "
        "the Python producer's spellings), print each execution's events and then the status of "
        "every step, and where to look next (`projector timeline`, `projector serve`). Safe to "
        "repeat: the second run stores nothing new.",
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
    _point_at_the_views(console, execution_ids, embedded=args.embedded)
    return 0


def _point_at_the_views(console: Console, execution_ids: list[str], *, embedded: bool) -> None:
    """Where to look next: the timeline of each sample, the live view and the web view."""
    prefix = "" if embedded else "--database-url URL "
    console.print("[bold]look at them[/bold]", highlight=False)
    for execution_id in execution_ids:
        console.print(f"  projector {prefix}timeline {escape(execution_id)}", highlight=False)
    console.print(
        f"  projector {prefix}timeline {escape(RETRIED)} --html retried.html"
        "   (a file to attach: SVG inside, also --svg / --png)",
        highlight=False,
        markup=False,
    )
    console.print(
        f"  projector {prefix}serve   (then open http://127.0.0.1:8800/; needs "
        "noetl-projector[web])",
        highlight=False,
        markup=False,
    )
