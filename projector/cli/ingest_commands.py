"""`projector ingest PATH|-`: store envelopes from NDJSON, a JSON array or a wrapped document."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from typing import IO, Any

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

from ..errors import ConfigurationError
from ..ingest import IngestReport, ingest
from ..pgsink import PostgresEventSink

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
        "--batch-size", type=int, default=2000, help="events per transaction (default: 2000)"
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
    for where, reason in report.rejected_at[:MAX_LISTED]:
        print(f"{source}:{where}: rejected: {reason}", file=sys.stderr)
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
                execution_id=execution_id,
            )
    print_report(report, source, args.json)
    return 1 if report.rejected_at or report.result.conflicts else 0
