"""`projector db ...`: schema migrations, partitions, retention, and the database's URL."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .. import migrate
from ..database import check_connection, wait_for_server
from ..partitions import Month, RetentionPlan, drop_months, ensure_partitions, plan_retention
from ..projection import connect
from . import options


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    db = subparsers.add_parser(
        "db",
        help="migrate the noetl schema (alembic), manage partitions and retention, print the URL",
        description="Manage the noetl schema. Migrations are alembic's; `alembic upgrade head` "
        "from the repository root does the same as `projector db upgrade`.",
    )
    sub = db.add_subparsers(title="db commands", metavar="COMMAND", required=True)
    up = sub.add_parser(
        "upgrade",
        help="migrate the database to the newest schema (idempotent)",
        description="Migrate the database to REVISION (default: head). With --wait, retry "
        "(backing off from 0.25 s to 5 s) for up to SECONDS while the server does not answer, "
        "e.g. while its container starts, then migrate.",
    )
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    up.add_argument(
        "--wait",
        type=options.seconds,
        metavar="SECONDS",
        default=None,
        help="wait up to SECONDS for the server to answer (default: try once)",
    )
    up.set_defaults(handler=upgrade, preflight=False)
    cur = sub.add_parser(
        "current",
        help="print the database's schema revision and the newest one",
        description="Print the revision the database is at and the newest one this version "
        "ships (head); exit 1 when the database is not at head: behind or never migrated (run "
        "`projector db upgrade`), or migrated by a newer version (upgrade noetl-projector).",
    )
    cur.set_defaults(handler=current)
    parts = sub.add_parser(
        "partitions",
        help="create the monthly partitions of noetl.event for the coming months",
        description="Create monthly partitions noetl.event_YYYY_MM for this month (UTC) and the "
        "N after it; existing ones are left alone. `projector project` does this by itself at "
        "start and hourly, so no cron job is needed while it runs.",
    )
    parts.add_argument(
        "--ahead",
        type=options.non_negative_int,
        metavar="N",
        default=3,
        help="months after this one to cover (default: 3)",
    )
    parts.set_defaults(handler=partitions)
    ret = sub.add_parser(
        "retention",
        help="drop the monthly partitions of noetl.event older than an age",
        description="Drop whole monthly partitions of noetl.event that end before now minus "
        "AGE (never DELETE): print each month's rows and size first. Refuses (exit 1, nothing "
        "dropped) while a month holds events `projector project` has not projected yet, or "
        "when it has never run. noetl.step_state and noetl.execution_state keep their rows; "
        "rows in noetl.event_default are never touched.",
        epilog="example: projector db retention --older-than 180d --dry-run",
    )
    ret.add_argument(
        "--older-than",
        type=options.age,
        metavar="AGE",
        required=True,
        help="drop months that end before now minus AGE: days or weeks, e.g. 180d, 26w",
    )
    ret.add_argument(
        "--dry-run", action="store_true", help="print what would be dropped, drop nothing"
    )
    ret.set_defaults(handler=retention)
    url = sub.add_parser(
        "url",
        help="print the database's URL (for psql, or your own tools)",
        description="Print the URL of the configured database, or of the embedded one (a "
        "Unix socket: postgresql://postgres@/postgres?host=DIR), which psql accepts: "
        'psql "$(projector db url)". The embedded server is left running for it until the '
        "next projector command ends; `projector psql` keeps it up exactly while psql runs.",
    )
    url.set_defaults(handler=url_command, preflight=False, keep_embedded=True)


async def upgrade(args: argparse.Namespace, db: str) -> int:
    if args.wait is not None:
        await wait_for_server(db, args.wait)
    else:
        await check_connection(db)
    await asyncio.to_thread(migrate.upgrade, db, args.revision)
    rev = await asyncio.to_thread(migrate.current, db)
    print(f"database is at revision {rev}")
    return 0


async def current(args: argparse.Namespace, db: str) -> int:
    rev = await asyncio.to_thread(migrate.current, db)
    head = migrate.head()
    if rev == head:
        state = "up to date"
    elif rev is not None and rev not in migrate.revisions():
        state = migrate.newer_than_this(rev)
    else:
        state = "run `projector db upgrade`"
    print(f"current: {rev or '(none)'}\nhead:    {head}\n{state}")
    return 0 if rev == head else 1


async def partitions(args: argparse.Namespace, db: str) -> int:
    async with await connect(db) as conn:
        created = await ensure_partitions(conn, args.ahead)
    print(f"created {created} partition(s)")
    return 0


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _month_line(m: Month) -> str:
    return (
        f"  {m.name}  {m.lower:%Y-%m-%d} .. {m.upper:%Y-%m-%d}  {m.rows:,} rows  "
        f"{_size(m.bytes)}  {m.executions:,} execution(s)"
    )


def _print_plan(plan: RetentionPlan, older_than: str) -> None:
    print(f"cut: {plan.cut:%Y-%m-%d %H:%M} UTC ({older_than} ago); months that end before it:")
    for m in plan.months:
        refused = f"  REFUSED: {m.unprojected:,} not projected yet" if m.unprojected else ""
        print(_month_line(m) + refused)
    rows = sum(m.rows for m in plan.months)
    size = sum(m.bytes for m in plan.months)
    print(f"  in all: {len(plan.months)} partition(s), {rows:,} rows, {_size(size)}")


def _print_kept(plan: RetentionPlan) -> None:
    print(
        "noetl.step_state and noetl.execution_state keep their rows (retention does not remove "
        "them, also for executions whose events are dropped), and the views noetl.step_status "
        "and noetl.execution_status show those rows for them; only an execution that gets a new "
        "event later is folded again, from the events that remain."
    )
    if plan.default_rows:
        print(
            f"noetl.event_default keeps its {plan.default_rows:,} event(s) older than the cut "
            "(retention drops whole months, never DELETEs)."
        )


async def retention(args: argparse.Namespace, db: str) -> int:
    async with await connect(db) as conn:
        plan = await plan_retention(conn, args.older_than)
        if not plan.months:
            print(
                f"no monthly partition of noetl.event ends before {plan.cut:%Y-%m-%d %H:%M} UTC: "
                "nothing to drop"
            )
            return 0
        _print_plan(plan, f"{args.older_than.days} days")
        if plan.refused:
            why = (
                "`projector project` has never run"
                if plan.checkpoint is None
                else "they are at or after the projector's checkpoint"
            )
            print(
                f"refused, nothing dropped: {len(plan.refused)} month(s) hold events the "
                f"projector has not projected yet ({why}); run `projector project --once`, then "
                "retention again",
                file=sys.stderr,
            )
            return 1
        if args.dry_run:
            print("dry run: nothing dropped")
            _print_kept(plan)
            return 0
        dropped = await drop_months(conn, plan)
    if not dropped:
        print(
            "refused, nothing dropped: events the projector has not projected yet arrived in "
            "these months meanwhile; run `projector project --once`, then retention again",
            file=sys.stderr,
        )
        return 1
    print(f"dropped {len(dropped)} partition(s): {', '.join(m.name for m in dropped)}")
    _print_kept(plan)
    return 0


async def url_command(args: argparse.Namespace, db: str) -> int:
    print(args.configured_url)
    if args.embedded:
        print(
            "projector: the embedded PostgreSQL stays up for this URL until the next projector "
            "command ends (`projector psql` keeps it up exactly while psql runs)",
            file=sys.stderr,
        )
    return 0
