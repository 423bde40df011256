"""`projector status`, `projector history`, `projector executions`: the exact views, rendered.

The rows come from :mod:`projector.readmodel`; this module parses the arguments and renders.
`status` shows the execution (with its parent and child executions), then its steps with their
iterations; an execution that is settled without an end event says so ("settled, 1 step failed,
no end event") instead of a bare ``RUNNING``. `executions --stalled 10m` lists the executions
that are not terminal and made no progress for that long.

Tables are coloured on a terminal and plain text otherwise (rich decides from the stream);
`--json` prints machine-readable JSON. Ids are never cut, at any width: the id columns never
wrap, and when a table does not fit the terminal (80 columns, say) the rows are printed as
blocks instead, the id on a line of its own that only the terminal wraps, the rest folded below
it. `history` prints blocks below :data:`WIDE` columns (the context on a line of its own). An
unknown execution id prints a message on stderr and the handler returns 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from datetime import datetime, timedelta

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from .. import readmodel
from ..fold import STATUSES, TERMINAL
from ..projection import connect
from ..readmodel import ExecutionStatus, StatusView, StepStatus, jsonable
from . import options
from .safe import escape, markup, text

__all__ = ["output_console", "print_status_tables", "register"]

#: Below this many columns `history` prints one block per event instead of a table.
WIDE = 120

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


def output_console(stderr: bool = False) -> Console:
    """A rich console: colour on a terminal, plain unwrapped text otherwise."""
    # Plain text when not a terminal: no colour codes, and no wrapping at 80 columns.
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=250, no_color=True, highlight=False)


def _qualifier(x: ExecutionStatus) -> str:
    """What a bare RUNNING does not say: settled without an end event."""
    if x.status in TERMINAL or not x.settled or x.step_count == 0:
        return ""
    n = x.steps_failed
    failed = f"{n} step{'' if n == 1 else 's'} failed, " if n else ""
    return f" (settled, {failed}no end event)"


def _render_status(console: Console, view: StatusView) -> None:
    x = view.execution
    console.print(
        f"execution [bold]{markup(x.execution_id)}[/bold]  "
        f"[{_style(x.status)}]{markup(x.status)}[/]{_qualifier(x)}  started {_ts(x.started_at)}  "
        f"duration {_duration(x.started_at, x.finished_at)}  "
        f"steps {x.step_count} (completed {x.steps_completed}, "
        f"failed {x.steps_failed}, running {x.steps_running})  "
        f"events {x.event_count}",
        markup=True,
        highlight=False,
        soft_wrap=True,
    )
    lines = []
    if x.playbook is not None:
        lines.append(f"playbook {escape(x.playbook)}")
    if x.parent_execution_id is not None:
        parent = view.parent
        known = f"  {parent.status}" if parent is not None else "  (no events stored)"
        lines.append(f"parent {escape(x.parent_execution_id)}{known}")
    if x.status not in TERMINAL:
        progress = f"last progress {_ts(x.last_progress_at)}, last event {_ts(x.last_event_at)}"
        lines.append(f"{progress}, open iterations {x.open_units}")
    if x.error is not None:
        lines.append(f"error {escape(x.error)}")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if view.steps:
        console.print(_steps_table(view.steps))
    else:
        console.print("no steps", highlight=False)
    if view.children:
        console.print(f"child executions: {len(view.children)}", highlight=False)
        _render_executions(console, view.children, progress=False)


def _fits(console: Console, table: Table) -> bool:
    """Whether `table` fits the console without cutting a column that must not wrap."""
    unbounded = console.options.update_width(1_000_000)  # measure() is capped at the width
    return console.measure(table, options=unbounded).minimum <= console.width


def _print_blocks(console: Console, blocks: Sequence[tuple[Text, Sequence[Text]]]) -> None:
    """Each block: its head (an id) on a line only the terminal wraps, then indented lines
    that rich folds to the width."""
    for head, lines in blocks:
        console.print(head, soft_wrap=True, highlight=False)
        for line in lines:
            console.print(
                Padding(line, (0, 0, 0, 2), expand=False), overflow="fold", highlight=False
            )


def _steps_table(steps: Sequence[StepStatus]) -> Table:
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    right = {"attempts", "iterations", "done/failed/running"}
    for name in (
        "step",
        "status",
        "attempts",
        "iterations",
        "done/failed/running",
        "started",
        "duration",
        "error",
    ):
        table.add_column(name, justify="right" if name in right else "left", overflow="fold")
    for s in steps:
        table.add_row(
            text(s.step),
            text(s.status, _style(s.status)),
            str(s.attempts),
            str(s.iterations),
            f"{s.iterations_completed}/{s.iterations_failed}/{s.iterations_running}",
            _ts(s.started_at),
            _duration(s.started_at, s.finished_at),
            text(s.error),
        )
    return table


def _executions_table(rows: Sequence[ExecutionStatus], *, progress: bool) -> Table:
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    names = ["execution", "status", "started", "duration", "steps", "failed", "events"]
    if progress:
        names.append("last progress")
    names.append("error")
    for name in names:
        # The id never wraps (a narrower terminal gets blocks, see _render_executions).
        table.add_column(name, no_wrap=name == "execution", overflow="fold")
    for r in rows:
        cells: list[str | Text] = [
            text(r.execution_id),
            text(r.status, _style(r.status)) + text(_qualifier(r)),
            _ts(r.started_at),
            _duration(r.started_at, r.finished_at),
            f"{r.steps_completed}/{r.step_count}",
            str(r.steps_failed),
            str(r.event_count),
        ]
        if progress:
            cells.append(_ts(r.last_progress_at))
        cells.append(text(r.error))
        table.add_row(*cells)
    return table


def _execution_block(r: ExecutionStatus, *, progress: bool) -> tuple[Text, list[Text]]:
    facts = Text.assemble(
        text(r.status, _style(r.status)),
        text(_qualifier(r)),
        f"  {_ts(r.started_at)}  {_duration(r.started_at, r.finished_at)}  "
        f"steps {r.steps_completed}/{r.step_count} ({r.steps_failed} failed)  "
        f"{r.event_count} events",
    )
    if progress:
        facts.append(f"  last progress {_ts(r.last_progress_at)}")
    lines = [facts]
    if r.error is not None:
        lines.append(Text("error ") + text(r.error))
    return text(r.execution_id, "bold"), lines


def _render_executions(
    console: Console, rows: Sequence[ExecutionStatus], *, progress: bool
) -> None:
    """A table when it fits the console, else one block per execution (the id whole)."""
    table = _executions_table(rows, progress=progress)
    if _fits(console, table):
        console.print(table)
    else:
        _print_blocks(console, [_execution_block(r, progress=progress) for r in rows])


def _context(e: readmodel.HistoryEvent) -> str:
    return json.dumps(e.context, ensure_ascii=False, separators=(",", ":"))


def _status_cell(e: readmodel.HistoryEvent) -> Text:
    return text(e.normalized_status, _style(e.normalized_status)) + text(
        f" ({e.status})" if e.status != e.normalized_status else ""
    )


def _history_table(events: Sequence[readmodel.HistoryEvent]) -> Table:
    table = Table(box=box.SIMPLE, show_edge=False, pad_edge=False)
    for name in ("created_at", "step", "event_type", "status", "attempt", "event_id", "context"):
        table.add_column(name, no_wrap=name == "event_id", overflow="fold")
    for e in events:
        table.add_row(
            _ts(e.created_at),
            text(e.step),
            text(e.event_type),
            _status_cell(e),
            "" if e.attempt is None else str(e.attempt),
            text(e.event_id),
            text(_context(e)),
        )
    return table


def _render_history(console: Console, events: Sequence[readmodel.HistoryEvent]) -> None:
    """A table on a wide console; else per event: the event id whole on its own line, then
    time, step, type, status and attempt, then the context, folded."""
    table = _history_table(events)
    if console.width >= WIDE and _fits(console, table):
        console.print(table)
        return
    blocks = []
    for e in events:
        attempt = "" if e.attempt is None else f"  attempt {e.attempt}"
        facts = Text.assemble(
            f"{_ts(e.created_at)}  ",
            text(e.step),
            "  ",
            text(e.event_type),
            "  ",
            _status_cell(e),
            attempt,
        )
        blocks.append((text(e.event_id, "bold"), [facts, text(_context(e))]))
    _print_blocks(console, blocks)


async def print_status_tables(db: str, execution_ids: Sequence[str], console: Console) -> None:
    """Print the status table of each execution (used at the end of `projector demo`)."""
    async with await connect(db) as conn:
        for execution_id in execution_ids:
            _render_status(console, await readmodel.status_view(conn, execution_id))


def _print_json(doc: object) -> None:
    print(escape(json.dumps(doc, ensure_ascii=False, indent=2), newlines=True))


async def status_command(args: argparse.Namespace, db: str) -> int:
    """`projector status EXECUTION_ID [--json]`."""
    async with await connect(db) as conn:
        view = await readmodel.status_view(conn, args.execution_id)
    if args.json:
        _print_json(view.jsonable())
    else:
        _render_status(output_console(), view)
    return 0


async def history_command(args: argparse.Namespace, db: str) -> int:
    """`projector history EXECUTION_ID [--json] [--step S]`: the events in fold order."""
    async with await connect(db) as conn:
        events = await readmodel.history(conn, args.execution_id, step=args.step)
    if args.json:
        _print_json([jsonable(e) for e in events])
        return 0
    _render_history(output_console(), events)
    return 0


async def executions_command(args: argparse.Namespace, db: str) -> int:
    """`projector executions [--status S] [--stalled DURATION] [--limit N] [--json]`."""
    async with await connect(db) as conn:
        rows = await readmodel.executions(
            conn, status=args.status, limit=args.limit, stalled_for=args.stalled
        )
    if args.json:
        _print_json([jsonable(r) for r in rows])
        return 0
    _render_executions(output_console(), rows, progress=args.stalled is not None)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `status`, `history` and `executions` to the command line."""
    p = subparsers.add_parser(
        "status",
        help="step status of one execution (exact, from the views)",
        description="Print the execution's status (with its playbook, parent, last progress, "
        "error, and a note when it is settled without an end event), then one row per step: "
        "status, attempts, iterations (done/failed/running), started, duration, error, then its "
        "child executions. Read from noetl.step_status / noetl.execution_status, so it is exact "
        "whether or not `projector project` has run. Exit 1 for an unknown execution.",
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
        description="List executions newest first with their status, step counts and error; "
        "exact even before `projector project` has caught up.",
        epilog="examples: projector executions --status FAILED --limit 5; "
        "projector executions --stalled 10m",
    )
    p.add_argument(
        "--status",
        type=options.status,
        default=None,
        help=f"only executions with this status: {', '.join(STATUSES)}, any case (also a "
        "spelling that means one, such as ok or error)",
    )
    p.add_argument(
        "--stalled",
        type=options.duration,
        default=None,
        metavar="DURATION",
        help="only executions that are not terminal and whose last progress (the last event "
        "that is not bookkeeping) is older than DURATION: 90s, 10m, 2h, 1d, 1h30m",
    )
    p.add_argument(
        "--limit", type=options.positive_int, default=20, help="at most N rows (default 20)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=executions_command)
