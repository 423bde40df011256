"""Fixtures of the fault suite: a PostgreSQL and `nats-server`s of its own (see `servers.py`).

`own_pg` is one server for the session (tests kill and restart it; each test starts with it
running); `fault_db` is a fresh database on it, cloned from a template migrated once with the
alembic code users run. `own_nats` is a fresh `nats-server` per test. The servers are never the
shared ones on 5432 / 4222, so killing them disturbs nobody else.
"""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from projector import migrate
from tests.conftest import fresh_database, with_dbname
from tests.faults.servers import NatsServer, PgServer, nats_server, pg_server

TEMPLATE = "projector_fault_tpl"


@pytest.fixture(scope="session")
def own_pg() -> Iterator[PgServer]:
    """The suite's own PostgreSQL (initdb in a temporary directory), for the whole session.

    No binaries is an error, not a skip: the embedded wheel (a dependency) always has them.
    """
    with pg_server() as server:
        with psycopg.connect(server.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
        migrate.upgrade(with_dbname(server.url(), TEMPLATE))
        yield server


@pytest.fixture
def pg(own_pg: PgServer) -> Iterator[PgServer]:
    """The suite's PostgreSQL, running at the start of the test (and again at its end)."""
    if not own_pg.running:
        own_pg.start()
    yield own_pg
    if not own_pg.running:
        own_pg.start()


@pytest.fixture
def fault_db(pg: PgServer) -> Iterator[str]:
    """URL of a fresh, migrated database of this test's own on the suite's PostgreSQL."""
    with fresh_database(pg.url(), TEMPLATE) as url:
        yield url


@pytest.fixture
def own_nats() -> Iterator[NatsServer]:
    """A `nats-server` of this test's own (JetStream, file store in a temporary directory)."""
    with nats_server() as server:
        yield server
