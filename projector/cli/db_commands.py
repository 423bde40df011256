"""`projector db ...`: schema migrations and partition upkeep."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import psycopg

from .. import migrate
from ..database import CONNECT_KWARGS
from ..errors import translating
from ..queries import query


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    db = subparsers.add_parser(
        "db",
        help="migrate the noetl schema (alembic) and manage partitions",
        description="Manage the noetl schema. Migrations are alembic's; `alembic upgrade head` "
        "from the repository root does the same as `projector db upgrade`.",
    )
    sub = db.add_subparsers(title="db commands", metavar="COMMAND", required=True)
    up = sub.add_parser("upgrade", help="migrate the database to the newest schema (idempotent)")
    up.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    up.set_defaults(handler=upgrade)
    cur = sub.add_parser("current", help="print the database's schema revision and the newest one")
    cur.set_defaults(handler=current)
    parts = sub.add_parser(
        "partitions",
        help="create the monthly partitions of noetl.event for the coming months",
        description="Create monthly partitions noetl.event_YYYY_MM from this month on. Run it "
        "from cron (monthly) so new events never land in the default partition. Retention: "
        "`DROP TABLE noetl.event_YYYY_MM` removes a month at once.",
    )
    parts.add_argument(
        "--ahead", type=int, default=3, help="months after this one to cover (default: 3)"
    )
    parts.set_defaults(handler=partitions)


@translating()
async def upgrade(args: argparse.Namespace, db: str) -> int:
    await asyncio.to_thread(migrate.upgrade, db, args.revision)
    rev = await asyncio.to_thread(migrate.current, db)
    print(f"database is at revision {rev}")
    return 0


@translating()
async def current(args: argparse.Namespace, db: str) -> int:
    rev = await asyncio.to_thread(migrate.current, db)
    head = migrate.head()
    state = "up to date" if rev == head else "run `projector db upgrade`"
    print(f"current: {rev or '(none)'}\nhead:    {head}\n{state}")
    return 0 if rev == head else 1


@translating()
async def partitions(args: argparse.Namespace, db: str) -> int:
    async with await psycopg.AsyncConnection.connect(db, autocommit=True, **CONNECT_KWARGS) as c:
        cur = await c.execute(query("admin.ensure_partitions"), (args.ahead + 1,))
        row = await cur.fetchone()
    print(f"created {row[0] if row else 0} partition(s)")
    return 0
