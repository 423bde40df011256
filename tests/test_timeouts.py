"""Timeouts are reported as timeouts, and the project's own sessions set the ones they need."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from projector import DatabaseUnavailable, PostgresEventSink
from projector.errors import DatabaseTimeout, LockTimeout, is_transient, translate, translating
from projector.projection import connect
from tests.factories import events

Conn = psycopg.AsyncConnection[Any]


async def test_a_statement_timeout_is_a_timeout_naming_the_setting(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SET statement_timeout = '50ms'")
        with pytest.raises(DatabaseTimeout) as info, translating():
            await conn.execute("SELECT pg_sleep(5)")
    assert info.value.setting == "statement_timeout"
    message = str(info.value)
    assert "statement_timeout" in message and "unavailable" not in message
    assert "raise statement_timeout" in message
    assert not is_transient(info.value)


async def test_a_lock_timeout_is_a_timeout_naming_the_setting(database_url: str) -> None:
    holder = await psycopg.AsyncConnection.connect(database_url)
    try:
        await holder.execute("LOCK TABLE noetl.projector_checkpoint IN ACCESS EXCLUSIVE MODE")
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute("SET lock_timeout = '50ms'")
            with pytest.raises(DatabaseTimeout) as info, translating():
                await conn.execute("SELECT * FROM noetl.projector_checkpoint")
    finally:
        await holder.close()
    assert info.value.setting == "lock_timeout" and "raise lock_timeout" in str(info.value)


async def test_a_cancel_request_is_not_a_timeout(database_url: str, aconn: Conn) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        pid = conn.info.backend_pid
        sleeping = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.3)
        await aconn.execute("SELECT pg_cancel_backend(%s)", (pid,))
        with pytest.raises(psycopg.errors.QueryCanceled) as info:
            await sleeping
    error = translate(info.value)
    assert isinstance(error, DatabaseUnavailable) and not isinstance(error, DatabaseTimeout)


def test_a_lock_timeout_of_the_sink_is_retried_by_those_who_retry_outages() -> None:
    error = LockTimeout("held", ["pid 1 ..."])
    assert isinstance(error, DatabaseUnavailable) and isinstance(error, DatabaseTimeout)
    assert is_transient(error) and error.setting == "lock_timeout"


async def test_the_projectors_sessions_override_the_databases_timeouts(
    database_url: str, aconn: Conn
) -> None:
    dbname = aconn.info.dbname
    await aconn.execute(f'ALTER DATABASE "{dbname}" SET statement_timeout = 1')
    await aconn.execute(f'ALTER DATABASE "{dbname}" SET lock_timeout = 1')
    conn = await connect(database_url)
    try:
        cur = await conn.execute(
            "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
        )
        assert await cur.fetchone() == ("0", "0")
    finally:
        await conn.close()


def test_rebuild_and_project_once_run_under_a_database_statement_timeout(
    database_url: str,
) -> None:
    """`projector rebuild` and `projector project --once` with a 1 ms statement_timeout on the
    database: it used to cancel them, reported as "PostgreSQL is unavailable"."""

    async def setup() -> None:
        async with PostgresEventSink(database_url) as sink:
            await sink.emit_many(events(20_000, per_execution=50))
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await conn.execute(f'ALTER DATABASE "{conn.info.dbname}" SET statement_timeout = 1')
            with pytest.raises(psycopg.errors.QueryCanceled):  # what a session of its own meets
                async with await psycopg.AsyncConnection.connect(database_url) as other:
                    await other.execute("SELECT count(*) FROM noetl.step_status")

    asyncio.run(setup())
    for command in (["project", "--once"], ["rebuild"]):
        done = subprocess.run(
            [sys.executable, "-m", "projector", "--database-url", database_url, *command],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "rebuilt 4000 steps of 400 executions" in done.stdout
