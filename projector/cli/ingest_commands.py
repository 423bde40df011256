"""`projector ingest PATH|-`: store envelopes from an NDJSON file or a JSON array."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from typing import IO, Any

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from ..ingest import IngestReport, ingest
from ..pgsink import PostgresEventSink
from .safe import escape

#: Files at least this large get a progress bar when stderr is a terminal.
PROGRESS_MIN_BYTES = 1 << 20
MAX_LISTED = 20


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "ingest",
        help="store envelopes from an NDJSON file or a JSON array (`-` reads stdin)",
        description="Store envelopes idempotently in noetl.event. Input: NDJSON (one envelope per "
        "line, as StdoutEventSink writes) or one JSON array. Invalid entries are reported with "
        "their line (or element) number and kept in noetl.event_rejected; every valid one is "
        "stored. Exit status 1 when anything was rejected or conflicting.",
    )
    p.add_argument("path", help="file to read, or - for standard input")
    p.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    p.add_argument(
        "--batch-size", type=int, default=2000, help="events per transaction (default: 2000)"
    )
    p.set_defaults(handler=run_ingest)


def print_report(report: IngestReport, source: str, as_json: bool) -> None:
    source = escape(source)  # a file name, and reasons quoting the input: shown, never obeyed
    for where, reason in report.rejected_at[:MAX_LISTED]:
        print(f"{source}:{where}: rejected: {escape(reason)}", file=sys.stderr)
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


async def run_ingest(args: argparse.Namespace, db: str) -> int:
    source = "stdin" if args.path == "-" else args.path
    with contextlib.ExitStack() as stack:
        if args.path == "-":
            stream: IO[bytes] = sys.stdin.buffer
            size = 0
        else:
            # A blocking open is fine here: nothing else runs on the loop yet.
            stream = stack.enter_context(open(args.path, "rb"))  # noqa: ASYNC230
            size = os.fstat(stream.fileno()).st_size
        progress = None
        if sys.stderr.isatty() and size >= PROGRESS_MIN_BYTES:
            progress = stack.enter_context(
                Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    DownloadColumn(),
                    TimeRemainingColumn(),
                    transient=True,
                )
            )
            task = progress.add_task(f"ingest {source}", total=size)
        async with PostgresEventSink(db, batch_size=args.batch_size) as sink:
            report = await ingest(
                sink,
                stream,
                source,
                (lambda n: progress.advance(task, n)) if progress is not None else None,
            )
    print_report(report, source, args.json)
    return 1 if report.rejected_at or report.result.conflicts else 0
