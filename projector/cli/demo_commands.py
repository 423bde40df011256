"""`projector demo`: migrate, ingest the bundled sample executions, show what was stored."""

from __future__ import annotations

import argparse
import asyncio
from importlib import resources
from typing import Any

import psycopg
from rich.console import Console
from rich.table import Table

from .. import migrate
from ..database import CONNECT_KWARGS
from ..ingest import ingest
from ..pgsink import PostgresEventSink

SAMPLES = ("success", "retried", "failed")


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "demo",
        help="migrate, ingest three sample executions and print their events",
        description="Migrate the database, ingest the bundled samples (a successful run, a run "
        "with a retried step, a failed run; written in the Rust seed's, the later crate's and "
        "the Python producer's spellings) and print each execution's events. Safe to repeat: "
        "the second run stores nothing new.",
    )
    p.set_defaults(handler=demo)


async def demo(args: argparse.Namespace, db: str) -> int:
    console = Console()
    await asyncio.to_thread(migrate.upgrade, db)
    console.print(f"[bold]schema[/bold] at revision {migrate.head()}")
    execution_ids: list[str] = []
    async with PostgresEventSink(db) as sink:
        for name in SAMPLES:
            path = resources.files("projector.samples") / f"{name}.ndjson"
            with path.open("rb") as stream:
                report = await ingest(sink, stream, f"samples/{name}.ndjson")
            counts = ", ".join(f"{v} {k}" for k, v in report.counts().items())
            console.print(f"[bold]ingest[/bold] samples/{name}.ndjson: {counts}", soft_wrap=True)
    async with await psycopg.AsyncConnection.connect(db, **CONNECT_KWARGS) as conn:
        cur = await conn.execute(
            "SELECT DISTINCT execution_id FROM noetl.event WHERE event_id LIKE 'demo-%%' "
            "OR execution_id = '7288213371283718001' ORDER BY 1"
        )
        execution_ids = [str(r[0]) for r in await cur.fetchall()]
        for execution_id in execution_ids:
            cur = await conn.execute(
                "SELECT created_at, event_type, step, status, worker_id FROM noetl.event "
                "WHERE execution_id = %s ORDER BY created_at, event_id",
                (execution_id,),
            )
            table = Table(title=f"execution {execution_id}", title_justify="left")
            for column in ("created_at", "event_type", "step", "status", "worker"):
                table.add_column(column)
            for created_at, event_type, step, status, worker in await cur.fetchall():
                table.add_row(
                    created_at.strftime("%H:%M:%S.%f")[:-3],
                    event_type,
                    step,
                    status or "",
                    worker or "",
                )
            console.print(table)
    return 0
