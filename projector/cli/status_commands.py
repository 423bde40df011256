"""`projector status`, `projector history`, `projector executions`: reading the exact views.

Tables are coloured on a terminal and plain text otherwise (rich decides from the stream);
`--json` prints machine-readable JSON. An unknown execution id prints a message on stderr and the
handler returns 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from rich import box
from rich.console import Console
from rich.table import Table

from ..database import CONNECT_KWARGS
from ..errors import UnknownExecution, translate
from ..fold import TERMINAL, normalize_status

__all__ = ["print_status_tables", "register"]

Row = dict[str, Any]

STEPS = """
SELECT execution_id, step, status, attempts, started_at, finished_at, last_event_at,
       last_event_type, event_count, error
FROM noetl.step_status WHERE execution_id = %s ORDER BY started_at, step COLLATE "C"
"""
EXECUTION = """
SELECT execution_id, status, started_at, finished_at, last_event_at, event_count, step_count,
       steps_completed, steps_failed, steps_running
FROM noetl.execution_status WHERE execution_id = %s
"""
HISTORY = """
SELECT created_at, step, event_type, status,
       noetl.normalize_status(status, event_type) AS normalized_status, event_id,
       noetl.event_attempt(context, meta) AS attempt, context, worker_id, meta
FROM noetl.event
WHERE execution_id = %(execution_id)s AND (%(step)s::text IS NULL OR step = %(step)s)
ORDER BY created_at, noetl.is_terminal(noetl.normalize_status(status, event_type)) DESC,
         event_id COLLATE "C"
"""
# Exact and cheap: the newest rows of execution_state (accurate for everything projected) plus
# every execution with events the projector has not read yet, all recomputed from the view.
EXECUTIONS = """
WITH candidates AS (
    (SELECT execution_id FROM noetl.execution_state
     WHERE %(status)s::text IS NULL OR status = %(status)s
     ORDER BY started_at DESC LIMIT %(limit)s)
    UNION
    SELECT DISTINCT execution_id FROM noetl.event
    WHERE txid >= coalesce(
        (SELECT position FROM noetl.projector_checkpoint WHERE name = 'default'), '0'::xid8)
)
SELECT v.execution_id, v.status, v.started_at, v.finished_at, v.last_event_at, v.event_count,
       v.step_count, v.steps_completed, v.steps_failed, v.steps_running
FROM candidates c
CROSS JOIN LATERAL noetl.execution_status_of(c.execution_id) v
WHERE %(status)s::text IS NULL OR v.status = %(status)s
ORDER BY v.started_at DESC, v.execution_id COLLATE "C" DESC
LIMIT %(limit)s
"""

_STYLE = {"COMPLETED": "green", "FAILED": "bold red", "CANCELLED": "yellow", "SKIPPED": "dim"}


def _style(status: str) -> str:
    return _STYLE.get(status, "cyan" if status not in TERMINAL else "")


def _ts(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if value is not None else "-"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return "-"
    delta: timedelta = end - start
    seconds = delta.total_seconds()
    if seconds < 60:
        return f"{seconds:.3f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def _jsonable(row: Row) -> Row:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def output_console(stderr: bool = False) -> Console:
    """A rich console: colour on a terminal, plain unwrapped text otherwise."""
    # Plain text when not a terminal: no colour codes, and no wrapping at 80 columns.
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=250, no_color=True, highlight=False)


async def _connect(db: str) -> psycopg.AsyncConnection[Row]:
    return await psycopg.AsyncConnection.connect(
        db, autocommit=True, row_factory=dict_row, **CONNECT_KWARGS
    )


async def _fetch(conn: psycopg.AsyncConnection[Row], query: str, params: Any) -> list[Row]:
    cur = await conn.execute(query, params)
    return await cur.fetchall()


async def _status_rows(
    conn: psycopg.AsyncConnection[Row], execution_id: str
) -> tuple[Row, list[Row]]:
    execution = await _fetch(conn, EXECUTION, (execution_id,))
    if not execution:
        raise UnknownExecution(execution_id)
    return execution[0], await _fetch(conn, STEPS, (execution_id,))


def _render_status(console: Console, execution: Row, steps: Sequence[Row]) -> None:
    status = execution["status"]
    console.print(
        f"execution [bold]{execution['execution_id']}[/bold]  "
        f"[{_style(status)}]{status}[/]  started {_ts(execution['started_at'])}  "
        f"duration {_duration(execution['started_at'], execution['finished_at'])}  "
        f"steps {execution['step_count']} (completed {execution['steps_completed']}, "
        f"failed {execution['steps_failed']}, running {execution['steps_running']})  "
        f"events {execution['event_count']}",
        markup=True,
        highlight=False,
        soft_wrap=True,
    )
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for name in ("step", "status", "attempts", "started", "duration", "error"):
        table.add_column(name, justify="right" if name == "attempts" else "left")
    for s in steps:
        table.add_row(
            s["step"],
            f"[{_style(s['status'])}]{s['status']}[/]",
            str(s["attempts"]),
            _ts(s["started_at"]),
            _duration(s["started_at"], s["finished_at"]),
            s["error"] or "",
        )
    console.print(table)


async def print_status_tables(db: str, execution_ids: Sequence[str], console: Console) -> None:
    """Print the status table of each execution (used at the end of `projector demo`)."""
    try:
        async with await _connect(db) as conn:
            for execution_id in execution_ids:
                execution, steps = await _status_rows(conn, execution_id)
                _render_status(console, execution, steps)
    except psycopg.Error as exc:
        raise translate(exc) from exc


def _fail(exc: UnknownExecution) -> int:
    output_console(stderr=True).print(f"error: {exc}", markup=False, highlight=False)
    return 1


async def status_command(args: argparse.Namespace, db: str) -> int:
    """`projector status EXECUTION_ID [--json]`."""
    try:
        async with await _connect(db) as conn:
            execution, steps = await _status_rows(conn, args.execution_id)
    except UnknownExecution as exc:
        return _fail(exc)
    except psycopg.Error as exc:  # unreachable, not migrated: main() reports it, exit 3
        raise translate(exc) from exc
    if args.json:
        doc = {**_jsonable(execution), "steps": [_jsonable(s) for s in steps]}
        print(json.dumps(doc, ensure_ascii=False, indent=2))
    else:
        _render_status(output_console(), execution, steps)
    return 0


async def history_command(args: argparse.Namespace, db: str) -> int:
    """`projector history EXECUTION_ID [--json] [--step S]`: the events in fold order."""
    try:
        async with await _connect(db) as conn:
            events = await _fetch(
                conn, HISTORY, {"execution_id": args.execution_id, "step": args.step}
            )
            if not events:
                known = await _fetch(
                    conn,
                    "SELECT 1 FROM noetl.event WHERE execution_id = %s LIMIT 1",
                    (args.execution_id,),
                )
                if not known:
                    raise UnknownExecution(args.execution_id)
    except UnknownExecution as exc:
        return _fail(exc)
    except psycopg.Error as exc:  # unreachable, not migrated: main() reports it, exit 3
        raise translate(exc) from exc
    if args.json:
        print(json.dumps([_jsonable(e) for e in events], ensure_ascii=False, indent=2))
        return 0
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for name in ("created_at", "step", "event_type", "status", "attempt", "event_id", "context"):
        table.add_column(name)
    for e in events:
        table.add_row(
            _ts(e["created_at"]),
            e["step"],
            e["event_type"],
            f"[{_style(e['normalized_status'])}]{e['normalized_status']}[/]"
            + (f" ({e['status']})" if e["status"] != e["normalized_status"] else ""),
            "" if e["attempt"] is None else str(e["attempt"]),
            e["event_id"],
            json.dumps(e["context"], ensure_ascii=False, separators=(",", ":")),
        )
    output_console().print(table)
    return 0


async def executions_command(args: argparse.Namespace, db: str) -> int:
    """`projector executions [--status S] [--limit N] [--json]`: newest first."""
    status = normalize_status(args.status, "") if args.status else None
    try:
        async with await _connect(db) as conn:
            rows = await _fetch(conn, EXECUTIONS, {"status": status, "limit": args.limit})
    except UnknownExecution as exc:
        return _fail(exc)
    except psycopg.Error as exc:  # unreachable, not migrated: main() reports it, exit 3
        raise translate(exc) from exc
    if args.json:
        print(json.dumps([_jsonable(r) for r in rows], ensure_ascii=False, indent=2))
        return 0
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for name in ("execution", "status", "started", "duration", "steps", "failed", "events"):
        table.add_column(name)
    for r in rows:
        table.add_row(
            r["execution_id"],
            f"[{_style(r['status'])}]{r['status']}[/]",
            _ts(r["started_at"]),
            _duration(r["started_at"], r["finished_at"]),
            f"{r['steps_completed']}/{r['step_count']}",
            str(r["steps_failed"]),
            str(r["event_count"]),
        )
    output_console().print(table)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `status`, `history` and `executions` to the command line."""
    p = subparsers.add_parser(
        "status",
        help="step status of one execution (exact, from the views)",
        description="Print the execution's status, then one row per step: status, attempts, "
        "started, duration, error. Read from noetl.step_status / noetl.execution_status, so it "
        "is exact whether or not `projector project` has run. Exit 1 for an unknown execution.",
        epilog="example: projector status 7288213371283718001 --json",
    )
    p.add_argument("execution_id", help="the execution id (as stored: integers as decimal text)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=status_command)

    p = subparsers.add_parser(
        "history",
        help="the events of one execution, in fold order",
        description="Print every stored event of an execution in the order the status rules "
        "read them (created_at, terminal first, event_id), with the raw and normalised status "
        "and the explicit attempt. Exit 1 for an unknown execution.",
        epilog="example: projector history demo-failed --step copy_users",
    )
    p.add_argument("execution_id", help="the execution id")
    p.add_argument("--step", default=None, help="only this step's events")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=history_command)

    p = subparsers.add_parser(
        "executions",
        help="executions, newest first",
        description="List executions newest first with their status and step counts; exact "
        "even before `projector project` has caught up.",
        epilog="example: projector executions --status FAILED --limit 5",
    )
    p.add_argument("--status", default=None, help="only executions with this status")
    p.add_argument("--limit", type=_positive, default=20, help="at most N rows (default 20)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=executions_command)
