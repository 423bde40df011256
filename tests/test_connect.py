"""Connect timeouts and connection failures below the command line: the sink, the migrations
(SQLAlchemy), the projector and a plain check all give up on a silent server within their
timeout, and a refused login is reported at once with the server's reason."""

from __future__ import annotations

import asyncio

import pytest

from projector import PostgresEventSink, migrate
from projector.database import check_connection, describe, wait_for_server, with_connect_timeout
from projector.errors import ConfigurationError, DatabaseUnavailable
from projector.projection import Projector
from tests.pgservers import PasswordServer


def test_with_connect_timeout_adds_whole_seconds_unless_the_url_has_one() -> None:
    assert (
        with_connect_timeout("postgresql://u@h/db", 2.1) == "postgresql://u@h/db?connect_timeout=3"
    )
    assert (
        with_connect_timeout("postgresql://u@/db?host=/run/pg", 10)
        == "postgresql://u@/db?host=/run/pg&connect_timeout=10"
    )
    explicit = "postgresql://u@h/db?connect_timeout=30"
    assert with_connect_timeout(explicit, 5) == explicit


def test_describe_never_shows_the_password() -> None:
    assert describe("postgresql://bob:secret@db.example:6543/noetl") == (
        "at db.example:6543/noetl as bob"
    )


async def test_a_wrong_password_is_reported_at_once_with_the_servers_reason(
    password_server: PasswordServer,
) -> None:
    # A pool would retry for its whole timeout and then say only "could not get a connection".
    sink = PostgresEventSink(password_server.url("wrong"), connect_timeout=60)
    with pytest.raises(DatabaseUnavailable) as info:
        await sink.open()
    message = str(info.value)
    assert 'password authentication failed for user "postgres"' in message
    assert "check the user and password in the database URL" in message
    assert "in time" not in message
    # The right password gets through to the schema check (this cluster was never migrated).
    await check_connection(password_server.url())


async def test_every_kind_of_connection_gives_up_on_a_silent_server(silent_url: str) -> None:
    """psycopg (check and projector), the sink's pool, and SQLAlchemy (alembic) side by side."""

    async def sink() -> None:
        await PostgresEventSink(silent_url, connect_timeout=2).open()

    async def projector() -> None:
        await Projector(with_connect_timeout(silent_url, 2)).once()

    async def alembic() -> None:
        await asyncio.to_thread(migrate.current, silent_url, connect_timeout=2)

    results = await asyncio.wait_for(
        asyncio.gather(
            check_connection(silent_url, 2),
            sink(),
            projector(),
            alembic(),
            return_exceptions=True,
        ),
        60,
    )
    assert [type(r) for r in results] == [DatabaseUnavailable] * 4, results
    for result in results:
        assert "timeout expired" in str(result)


async def test_a_url_libpq_cannot_read_is_a_configuration_error(database_url: str) -> None:
    with pytest.raises(ConfigurationError, match="bad database URL"):
        await check_connection(database_url + "?colour=blue")


async def test_wait_for_server_gives_up_after_its_deadline(closed_url: str) -> None:
    with pytest.raises(DatabaseUnavailable, match=r"Connection refused.*still failing after 0.3 s"):
        await wait_for_server(closed_url, 0.3)
