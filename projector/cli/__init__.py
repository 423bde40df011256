"""The `projector` command line (also `python -m projector`).

Every command that needs PostgreSQL takes `--database-url` (env: PROJECTOR_DATABASE_URL); with
neither, an embedded PostgreSQL is started whose data lives in the user's data directory.

Exit status: 0 success; 1 the data had problems (rejected or conflicting events, unknown
execution); 2 usage error; 3 the environment failed (database unreachable, schema missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import sys
from collections.abc import Sequence
from types import ModuleType

from ..database import database_url, embedded_data_dir, embedded_server
from ..errors import ProjectorError
from . import (
    db_commands,
    demo_commands,
    ingest_commands,
    nats_commands,
    project_commands,
    safe,
    status_commands,
)


class ExitCode(enum.IntEnum):
    """The exit statuses the README documents."""

    OK = 0
    #: Something was rejected or conflicting (everything valid was still stored), or the
    #: execution id is unknown.
    DATA = 1
    USAGE = 2
    #: The database (or NATS) is unreachable, refused us, or the schema is missing.
    ENVIRONMENT = 3
    INTERRUPTED = 130


#: Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[ModuleType, ...] = (
    demo_commands,
    db_commands,
    ingest_commands,
    status_commands,
    project_commands,
    nats_commands,
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="projector",
        description=(
            "Durable history and exact step status of noetl execution events in PostgreSQL."
        ),
        epilog=(
            "Database: --database-url or PROJECTOR_DATABASE_URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/postgres); with neither, an embedded "
            f"PostgreSQL is started with its data in {embedded_data_dir()}. "
            "Exit status: 0 ok, 1 rejected/conflicting data or unknown execution, 2 usage, "
            "3 database unavailable or schema missing."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="PostgreSQL URL (env: PROJECTOR_DATABASE_URL; default: embedded PostgreSQL)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and retries")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    _accept_everywhere(parser, "--database-url")
    return parser


def _accept_everywhere(parser: argparse.ArgumentParser, option: str) -> None:
    """Let every subcommand take `option` too (`projector status X --database-url URL`)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in set(action.choices.values()):
                sub.add_argument(
                    option, metavar="URL", default=argparse.SUPPRESS, help=argparse.SUPPRESS
                )
                _accept_everywhere(sub, option)


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return its exit status (errors printed to stderr)."""
    try:
        parser = build_parser()
    except ProjectorError as exc:  # a malformed PROJECTOR_* variable: the defaults come from it
        print(f"projector: error: {safe.error_text(exc)}", file=sys.stderr)
        return ExitCode.USAGE
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    safe.guard_logging()  # log lines: credentials redacted, control characters escaped
    try:
        with contextlib.ExitStack() as stack:
            url = ""
            if getattr(args, "needs_db", True):
                configured = database_url(args.database_url)
                if configured is None:
                    print(
                        f"projector: using the embedded PostgreSQL in {embedded_data_dir()} "
                        "(set PROJECTOR_DATABASE_URL to use your own server)",
                        file=sys.stderr,
                    )
                    configured = stack.enter_context(embedded_server())
                url = configured
            status: int = asyncio.run(args.handler(args, url))
            return status
    except ProjectorError as exc:
        print(f"projector: error: {safe.error_text(exc)}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    except KeyboardInterrupt:
        print("projector: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run(argv))
