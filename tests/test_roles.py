"""Least privilege: a user of each role does its job, and nothing else.

Roles belong to the whole server, so the login users are created here for each test (with names
no other test run uses) and dropped afterwards; the NOLOGIN roles come from the migrations.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import errors, sql
from psycopg.conninfo import conninfo_to_dict

from projector import PostgresEventSink, RawEnvelope, migrate, readmodel
from projector.errors import LockTimeout
from projector.projection import Projector, connect, rebuild
from tests.factories import event, events

Conn = psycopg.AsyncConnection[Any]
ROLES = ("noetl_writer", "noetl_projector", "noetl_reader")

_counter = itertools.count()


def as_user(url: str, user: str, password: str = "pw") -> str:
    """`url` logging in as `user`."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}:{password}@{host}", parts.path, parts.query, ""))


@pytest.fixture
def login(database_url: str, server_url: str) -> Iterator[Callable[[str | None], str]]:
    """`login(role)`: the URL of a new login user that is a member of `role` (None: of none)."""
    made: list[str] = []

    def make(role: str | None) -> str:
        name = f"t_{(role or 'nobody').removeprefix('noetl_')}_{os.getpid()}_{next(_counter)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw'").format(sql.Identifier(name))
                if role is None
                else sql.SQL("CREATE ROLE {} LOGIN PASSWORD 'pw' IN ROLE {}").format(
                    sql.Identifier(name), sql.Identifier(role)
                )
            )
        made.append(name)
        return as_user(database_url, name)

    yield make
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(  # sessions the test left open (a pool closing late) must not keep them
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = ANY(%s)",
            (made,),
        )
        for name in made:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
async def as_writer(login: Callable[[str | None], str]) -> AsyncIterator[Conn]:
    conn = await psycopg.AsyncConnection.connect(login("noetl_writer"), autocommit=True)
    yield conn
    await conn.close()


REWRITES = [
    "UPDATE noetl.event SET status = 'FAILED'",
    "DELETE FROM noetl.event",
    "TRUNCATE noetl.event",
    "UPDATE noetl.event_default SET status = 'FAILED'",
    "DELETE FROM noetl.event_rejected",
]


async def refused(conn: Conn, statement: str) -> bool:
    try:
        await conn.execute(statement)  # type: ignore[arg-type]
    except errors.InsufficientPrivilege:
        return True
    return False


async def test_the_roles_are_nologin(aconn: Conn) -> None:
    cur = await aconn.execute(
        "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
        (list(ROLES),),
    )
    assert await cur.fetchall() == [(r, False) for r in sorted(ROLES)]


async def test_a_writer_stores_events_and_cannot_rewrite_history(
    login: Callable[[str | None], str], aconn: Conn
) -> None:
    url = login("noetl_writer")
    batch = events(300)
    async with PostgresEventSink(url) as sink:
        first = await sink.emit_many([*batch, RawEnvelope(b"not json", "f", 1)])
        again = await sink.emit_many(batch[:10])
        assert await sink.emit(event("x", "1")) == "inserted"
        conflict = await sink.emit_many([batch[0].model_copy(update={"status": "FAILED"})])
    assert (first.inserted, len(first.rejected)) == (300, 1)
    assert again.duplicates == 10 and conflict.conflicts == 1
    cur = await aconn.execute("SELECT count(*) FROM noetl.event_rejected")
    assert await cur.fetchone() == (1,)
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as writer:
        for statement in [
            *REWRITES,
            "SELECT * FROM noetl.event_rejected",
            "SELECT * FROM noetl.step_state",
            "INSERT INTO noetl.step_state VALUES ('e', 's', 'x', 1, now(), now(), now(), 't', 1)",
            "UPDATE noetl.projector_checkpoint SET position = '0'",
            "SELECT noetl.ensure_event_partitions(current_date, 1)",
            # A txid below the checkpoint would never be projected (revision 0007).
            "INSERT INTO noetl.event (execution_id, event_id, event_type, created_at, txid) "
            "VALUES ('e', 'x', 'step.enter', now(), '3')",
        ]:
            assert await refused(writer, statement), statement
        await writer.execute(
            "INSERT INTO noetl.event (execution_id, event_id, event_type, created_at) "
            "VALUES ('e', 'by-hand', 'step.enter', now())"
        )
    cur = await aconn.execute(
        "SELECT count(*), count(*) FILTER (WHERE status = 'FAILED'), "
        "bool_and(txid::text::bigint > 3) FROM noetl.event"
    )
    assert await cur.fetchone() == (302, 0, True)


async def test_the_projector_role_projects_rebuilds_and_creates_partitions(
    login: Callable[[str | None], str], database_url: str, aconn: Conn
) -> None:
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many(events(500, per_execution=50))
    # A hardened database: only roles granted TEMPORARY may create temporary tables (the
    # rebuild's workers keep their steps in one; revision 0009 grants it to the role).
    dbname = conninfo_to_dict(database_url)["dbname"]
    await aconn.execute(
        sql.SQL("REVOKE TEMPORARY ON DATABASE {} FROM PUBLIC").format(sql.Identifier(str(dbname)))
    )
    # Grants on a database do not come with a copy of a template: apply 0009 to this one.
    await asyncio.to_thread(migrate.downgrade, database_url, "0008")
    await asyncio.to_thread(migrate.upgrade, database_url)
    url = login("noetl_projector")
    assert await Projector(url).once() == 500
    conn = await connect(url)
    try:
        result = await rebuild(conn)
        assert (result.steps, result.executions) == (100, 10)
        cur = await conn.execute("SELECT noetl.ensure_event_partitions('2040-01-01', 2)")
        assert await cur.fetchone() == (2,)
        for statement in [
            *REWRITES,
            "INSERT INTO noetl.event (execution_id, event_id, event_type, created_at) "
            "VALUES ('e', '1', 't', now())",
            "DROP TABLE noetl.event_2040_01",
        ]:
            try:
                await conn.execute(statement)  # type: ignore[arg-type]
            except (errors.InsufficientPrivilege, errors.ProgrammingError) as exc:
                assert "permission denied" in str(exc) or "must be owner" in str(exc)
            else:
                pytest.fail(f"the projector role may run {statement}")
    finally:
        await conn.close()
    cur = await aconn.execute("SELECT count(*) FROM noetl.step_state")
    assert await cur.fetchone() == (100,)


async def test_a_reader_reads_everything_and_writes_nothing(
    login: Callable[[str | None], str], database_url: str
) -> None:
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many([*events(20), RawEnvelope(b"{", "f", 1)])
    await Projector(database_url).once()
    url = login("noetl_reader")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as reader:
        for table in ("event", "event_rejected", "step_status", "execution_status", "step_state"):
            cur = await reader.execute(
                sql.SQL("SELECT count(*) FROM noetl.{}").format(sql.Identifier(table))
            )
            row = await cur.fetchone()
            assert row is not None and row[0] > 0, table
        status = await readmodel.execution_status(reader, "exec-0")
        assert status.event_count == 20
        for statement in [
            *REWRITES,
            "INSERT INTO noetl.event (execution_id, event_id, event_type, created_at) "
            "VALUES ('e', '1', 't', now())",
            "INSERT INTO noetl.event_rejected (raw, source, reason) VALUES ('x', 'y', 'z')",
            "DELETE FROM noetl.step_state",
            "UPDATE noetl.projector_checkpoint SET position = '0'",
            "SELECT noetl.ensure_event_partitions('2040-01-01', 1)",
        ]:
            assert await refused(reader, statement), statement


async def test_tables_later_revisions_create_are_readable(
    login: Callable[[str | None], str], aconn: Conn
) -> None:
    """Default privileges: a table created after 0004 (by the role that migrates) can be read by
    the reader and the projector, not by the writer."""
    await aconn.execute("CREATE TABLE noetl.later (x int)")
    await aconn.execute("INSERT INTO noetl.later VALUES (1)")
    for role, readable in (
        ("noetl_reader", True),
        ("noetl_projector", True),
        ("noetl_writer", False),
    ):
        async with await psycopg.AsyncConnection.connect(login(role), autocommit=True) as conn:
            assert (not await refused(conn, "SELECT * FROM noetl.later")) is readable, role


async def test_a_stranger_holding_the_sinks_locks_is_named(
    login: Callable[[str | None], str], database_url: str
) -> None:
    """Any role can take the sink's advisory locks (they need no privilege): a writer stalled by
    one gives up after retry_for naming that session, even though the writer's role may not see
    how long the stranger's transaction has been open."""
    from projector.channels import SINK_LOCK_CLASS
    from projector.pglookup import lock_bucket

    stranger = await psycopg.AsyncConnection.connect(login(None), application_name="stranger")
    try:
        pid = stranger.info.backend_pid
        await stranger.execute(
            "SELECT pg_advisory_xact_lock(%s, %s)", (SINK_LOCK_CLASS, lock_bucket("held"))
        )
        async with PostgresEventSink(login("noetl_writer"), lock_timeout=0.2, retry_for=1) as sink:
            with pytest.raises(LockTimeout) as info:
                await sink.emit(event("held", "1"))
    finally:
        await stranger.close()
    message = str(info.value)
    assert f"pid {pid} (application_name 'stranger'" in message
    assert "for at least" in message and "as long as the sink waited" in message


def test_a_downgrade_keeps_roles_other_databases_use(empty_database_url: str) -> None:
    """The test server's other databases (the template, at least) hold privileges for the roles:
    downgrading this one revokes its own and leaves the roles in place."""
    url = empty_database_url
    migrate.upgrade(url)
    migrate.downgrade(url, "0003")
    with psycopg.connect(url) as conn:
        roles = conn.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (list(ROLES),)
        ).fetchone()
        here = conn.execute(
            "SELECT count(*) FROM pg_shdepend s JOIN pg_roles r ON r.oid = s.refobjid "
            "WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND r.rolname = ANY(%s)",
            (list(ROLES),),
        ).fetchone()
        secdef = conn.execute(
            "SELECT prosecdef, has_function_privilege('public', oid, 'EXECUTE') FROM pg_proc "
            "WHERE proname = 'ensure_event_partitions'"
        ).fetchone()
    assert roles == (3,) and here == (0,)
    assert secdef == (False, True)  # the function as 0001 made it
    migrate.upgrade(url)  # and up again, the roles existing already
    assert migrate.current(url) == migrate.head()


def test_the_readme_creates_login_users_as_it_says(server_url: str, database_url: str) -> None:
    """The README's `CREATE ROLE ... IN ROLE` block, run as written (with names of this run's
    own): a user for the sink, one for the projector and one for reading status."""
    readme = Path(__file__).parent.parent.joinpath("README.md").read_text()
    block = re.search(r"```sql\n(CREATE ROLE .*?)```", readme, re.S)
    assert block is not None
    suffix = f"_{os.getpid()}_{next(_counter)}"
    statements = re.sub(r"CREATE ROLE (\w+)", rf"CREATE ROLE \g<1>{suffix}", block.group(1))
    sink_user, project_user, status_user = re.findall(r"CREATE ROLE (\w+)", statements)
    password = re.findall(r"PASSWORD '([^']*)'", statements)[0]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(statements)  # type: ignore[call-overload]

    async def work() -> tuple[int, int, int]:
        async with PostgresEventSink(as_user(database_url, sink_user, password)) as sink:
            inserted = (await sink.emit_many(events(5))).inserted
        projected = await Projector(as_user(database_url, project_user, password)).once()
        url = as_user(database_url, status_user, password)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as reader:
            status = await readmodel.execution_status(reader, "exec-0")
        return inserted, projected, status.event_count

    try:
        assert asyncio.run(work()) == (5, 5, 5)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            for name in (sink_user, project_user, status_user):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.mark.slow
def test_a_downgrade_drops_only_the_roles_nothing_else_uses(tmp_path: Path) -> None:
    """On a server of its own (the shared test server's other databases would keep every role):
    a role with a member stays, the others are dropped, and upgrading creates them again."""
    from projector.database import embedded_server

    with embedded_server(tmp_path / "pgdata") as url:

        def roles() -> list[str]:
            with psycopg.connect(url) as conn:
                rows = conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
                    (list(ROLES),),
                ).fetchall()
            return [str(r[0]) for r in rows]

        migrate.upgrade(url)
        assert roles() == sorted(ROLES)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE ROLE member_of_reader LOGIN IN ROLE noetl_reader")
        migrate.downgrade(url, "0003")
        assert roles() == ["noetl_reader"]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP ROLE member_of_reader")
        migrate.upgrade(url)
        migrate.downgrade(url, "base")
        assert roles() == []
        migrate.upgrade(url)
        assert roles() == sorted(ROLES)


def test_a_login_without_the_role_is_told_which_role(
    login: Callable[[str | None], str], capfd: pytest.CaptureFixture[str]
) -> None:
    """`projector status` as a writer (no read of the status views): exit 3, one line that names
    the privilege PostgreSQL refused and the roles that have it."""
    from projector.cli import run

    code = run(["--database-url", login("noetl_writer"), "status", "demo-failed"])
    err = capfd.readouterr().err.strip()
    assert code == 3, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("projector: error: database error: permission denied for "), err
    assert "noetl_reader reads" in err


def test_a_login_that_cannot_migrate_is_told_who_can(
    login: Callable[[str | None], str], server_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """`db upgrade` of an empty database as a projector login: PostgreSQL refuses the schema; the
    line says migrations run as the schema's owner (no role of the list can do them)."""
    from projector.cli import run

    name = f"t_unmigrated_{os.getpid()}_{next(_counter)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = login("noetl_projector").rsplit("/", 1)[0] + "/" + name
        code = run(["--database-url", url, "db", "upgrade"])
        err = capfd.readouterr().err.strip()
        assert code == 3, err
        assert "permission denied" in err and "run as the schema's owner" in err, err
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
