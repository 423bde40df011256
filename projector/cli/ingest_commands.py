"""`projector ingest PATH|-`: store envelopes from NDJSON, a JSON array or a wrapped document."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from ..batch import BatchResult, Item
from ..errors import ConfigurationError
from ..ingest import IngestReport, ingest
from ..pgsink import PostgresEventSink
from . import options
from .safe import escape

#: Files at least this large get a progress bar when stderr is a terminal.
PROGRESS_MIN_BYTES = 1 << 20
MAX_LISTED = 20


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="store envelopes from NDJSON, a JSON array or a noetl export (`-` reads stdin)",
        description="Store envelopes idempotently in noetl.event. Input: NDJSON (one envelope per "
        "line, as StdoutEventSink and `noetl subscribe --events` write), a JSON array, a noetl API "
        'export ({"result": [...]}) or upstream notifications ({"events": [...]}, {"event": '
        "{...}}); a byte-order mark is skipped. Invalid entries are reported as PATH:line N or "
        "PATH:element N and kept in noetl.event_rejected; every valid one is stored. Rows without "
        "event_id get a derived id (identical rows of one file are distinct events; the same "
        "file again stores nothing). Exit status 1 when anything was rejected or conflicting.",
    )
    p.add_argument("path", help="file to read, or - for standard input")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.add_argument(
        "--batch-size",
        type=options.positive_int,
        default=2000,
        help="events per transaction (default: 2000)",
    )
    p.add_argument(
        "--execution-id",
        metavar="ID",
        help="the execution id of rows that carry none (noetl API exports of one execution); a "
        "row that carries another one is rejected",
    )
    p.set_defaults(handler=run_ingest)


def _execution_id(value: str | None) -> str | int | None:
    """`--execution-id` as the envelope keeps it: digits as an integer (written back as one)."""
    if value is None:
        return None
    if not value.strip():
        raise ConfigurationError("--execution-id must not be empty")
    return int(value) if re.fullmatch(r"-?[0-9]+", value) else value


def print_report(report: IngestReport, source: str, as_json: bool) -> None:
    source = escape(source)  # a file name, and reasons quoting the input: shown, never obeyed
    for where, reason in report.rejected_at[:MAX_LISTED]:
        print(f"{source}:{where}: rejected: {escape(reason)}", file=sys.stderr)
    if any(reason == "execution_id is required" for _, reason in report.rejected_at):
        print(
            f"{source}: rows without an execution id (a noetl API export of one execution?): "
            "give it with --execution-id ID",
            file=sys.stderr,
        )
    if len(report.rejected_at) > MAX_LISTED:
        print(
            f"{source}: ... and {len(report.rejected_at) - MAX_LISTED} more rejected "
            "(all are in noetl.event_rejected)",
            file=sys.stderr,
        )
    for execution_id, event_id in report.result.conflict_ids[:MAX_LISTED]:
        print(
            f"{source}: conflict: event {event_id!r} of execution {execution_id!r} is stored "
            "with different content (stored row kept)",
            file=sys.stderr,
        )
    counts = report.counts()
    if as_json:
        print(json.dumps(counts))
    else:
        print(", ".join(f"{v} {k}" for k, v in counts.items()))


class _CountingSink(PostgresEventSink):
    """The sink, adding up what each committed batch stored (for the progress bar and Ctrl-C)."""

    def __init__(self, url: str, batch_size: int) -> None:
        super().__init__(url, batch_size=batch_size)
        self.committed = BatchResult()
        self.progress: Progress | None = None
        self.task: Any = None
        self.started = time.monotonic()

    async def emit_many(self, items: Iterable[Item], *, source: str = "api") -> BatchResult:
        result = await super().emit_many(items, source=source)
        c = self.committed
        c.inserted += result.inserted
        c.duplicates += result.duplicates
        c.conflicts += result.conflicts
        c.rejected.extend(result.rejected)
        if self.progress is not None:
            events = c.inserted + c.duplicates + c.conflicts + len(c.rejected)
            rate = events / max(time.monotonic() - self.started, 1e-3)
            self.progress.update(
                self.task,
                events=events,
                rate=rate,
                inserted=c.inserted,
                duplicates=c.duplicates,
            )
        return result

    def summary(self) -> str:
        c = self.committed
        events = c.inserted + c.duplicates + c.conflicts + len(c.rejected)
        return (
            f"{events:,} events committed ({c.inserted:,} inserted, {c.duplicates:,} duplicates, "
            f"{c.conflicts:,} conflicts, {len(c.rejected):,} rejected)"
        )


def _progress_bar() -> Progress:
    """Events committed, their rate, inserted and duplicates; the bar is the share of the file
    read (at most one batch ahead of what is committed)."""
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn(
            "{task.fields[events]:,} events  {task.fields[rate]:,.0f}/s  "
            "inserted {task.fields[inserted]:,}  duplicates {task.fields[duplicates]:,}"
        ),
        TimeElapsedColumn(),
        console=Console(stderr=True),  # stdout is the report's (--json)
        transient=True,
    )


async def run_ingest(args: argparse.Namespace, db: str) -> int:
    source = "stdin" if args.path == "-" else args.path
    execution_id = _execution_id(args.execution_id)
    with contextlib.ExitStack() as stack:
        if args.path == "-":
            stream: IO[bytes] = sys.stdin.buffer
            size = 0
        else:
            # A blocking open is fine here: nothing else runs on the loop yet.
            stream = stack.enter_context(open(args.path, "rb"))  # noqa: ASYNC230
            size = os.fstat(stream.fileno()).st_size
        sink = _CountingSink(db, args.batch_size)
        on_bytes = None
        if sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES:
            progress = stack.enter_context(_progress_bar())
            sink.progress = progress
            sink.task = progress.add_task(
                f"ingest {source}", total=size, events=0, rate=0.0, inserted=0, duplicates=0
            )

            def on_bytes(n: int) -> None:
                progress.advance(sink.task, n)

        try:
            async with sink:
                report = await ingest(sink, stream, source, on_bytes, execution_id=execution_id)
        except asyncio.CancelledError:  # Ctrl-C: say what is stored for sure
            print(
                f"{source}: interrupted after {sink.summary()}; the batch in flight may or may "
                "not be stored: ingest the same input again to store the rest (what is stored "
                "counts as duplicates)",
                file=sys.stderr,
            )
            raise
    print_report(report, source, args.json)
    return 1 if report.rejected_at or report.result.conflicts else 0
