"""The projector's checkpoint moves in the same transaction as the state it covers.

Triggers installed in the test database record, in tables of their own, every write to
``noetl.step_state`` and every move of ``noetl.projector_checkpoint`` (rows only kept when the
writing transaction commits), and break one projector session on purpose: its checkpoint write
raises, or its connection is terminated right after the state writes, before the checkpoint
write. The session is told apart by its ``application_name``, so that the projector run after it,
on a connection of its own, works normally.

What must hold, and why each assertion catches the opposite design:

* After the failure, nothing of the chunk is visible (no state row, no checkpoint row or the old
  position). Were the checkpoint written after the state's commit (in a transaction of its own),
  the state rows would be committed while the checkpoint stayed behind: the first assertion fails.
* Once the projector runs again, every step row was written by exactly one committed transaction
  (each key once: every event projected once). With the checkpoint after the commit, the chunk
  the checkpoint did not cover is projected again: its keys are written twice.
* Every committed move of the checkpoint goes forward (``new >= old``), through small chunks, the
  failure and a rebuild.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from projector.errors import ProjectorError
from projector.projection import (
    catch_up,
    checkpoint,
    connect,
    horizon,
    project_chunk,
    rebuild,
)
from tests.eventlog import insert_events, read_executions, read_steps
from tests.factories import event

Conn = psycopg.AsyncConnection[Any]

AUDIT = """
CREATE TABLE public.step_writes (execution_id text, step text);
CREATE TABLE public.checkpoint_moves (n bigserial, old xid8, new xid8);
CREATE FUNCTION public.log_step_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.step_writes VALUES (NEW.execution_id, NEW.step);
  RETURN NULL;
END $$;
CREATE TRIGGER log_step_write AFTER INSERT OR UPDATE ON noetl.step_state
  FOR EACH ROW EXECUTE FUNCTION public.log_step_write();
CREATE FUNCTION public.log_checkpoint_move() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.checkpoint_moves (old, new) VALUES (OLD.position, NEW.position);
  RETURN NULL;
END $$;
CREATE TRIGGER log_checkpoint_move AFTER UPDATE ON noetl.projector_checkpoint
  FOR EACH ROW EXECUTE FUNCTION public.log_checkpoint_move();
"""

REFUSE_CHECKPOINT = """
CREATE FUNCTION public.refuse_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  -- Only the move past the stored events: empty chunks before them (another session's open
  -- transaction holding the fence back) go through, so the refused chunk is the one with events.
  IF current_setting('application_name') = 'doomed'
     AND NEW.position > (SELECT min(txid) FROM noetl.event) THEN
    RAISE EXCEPTION 'checkpoint write refused by the test';
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER refuse_checkpoint BEFORE UPDATE ON noetl.projector_checkpoint
  FOR EACH ROW EXECUTE FUNCTION public.refuse_checkpoint();
"""

# Fires once the executions are written, which is after the steps and before the checkpoint.
KILL_AFTER_STATE = """
CREATE FUNCTION public.kill_after_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('application_name') = 'doomed' THEN
    PERFORM pg_terminate_backend(pg_backend_pid());
    PERFORM pg_sleep(5);  -- the termination arrives at the next interrupt check
  END IF;
  RETURN NULL;
END $$;
CREATE TRIGGER kill_after_state AFTER INSERT OR UPDATE ON noetl.execution_state
  FOR EACH STATEMENT EXECUTE FUNCTION public.kill_after_state();
"""


def events(n_executions: int = 4, per_execution: int = 5) -> list[Any]:
    out = []
    for x in range(n_executions):
        for i in range(per_execution):
            status = "COMPLETED" if i == per_execution - 1 else "RUNNING"
            out.append(
                event(
                    f"cp-{x}", f"{i}", event_type="step.exit", step=f"s{i % 2}", status=status, at=i
                )
            )
    return out


async def project_all(url: str, max_events: int = 10_000) -> int:
    """`projector project --once` on a connection of its own: every event committed before."""
    conn = await connect(url)
    try:
        return await catch_up(conn, max_events=max_events, until=await horizon(conn))
    finally:
        await conn.close()


async def fail_projecting(url: str, match: str | None = None) -> Conn:
    """Run the doomed session's projector until it meets the failure (the fence may hold the
    chunk back for a moment: other sessions on the server); return its connection, closed."""
    bad = await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="doomed")
    try:
        with pytest.raises(ProjectorError, match=match):
            for _ in range(600):
                result = await project_chunk(bad)
                assert result is None or result.events == 0, "the chunk was projected"
                await asyncio.sleep(0.05)
    finally:
        await bad.close()
    return bad


async def doomed(url: str) -> Conn:
    return await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="doomed")


async def not_passed(aconn: Conn, execution_ids: list[str]) -> None:
    """The checkpoint has not passed the transaction that stored these executions' events (it
    may move over positions where no event is), and none of them has a state row."""
    cur = await aconn.execute(
        "SELECT c.position <= min(e.txid) FROM noetl.projector_checkpoint c, noetl.event e "
        "WHERE c.name = 'default' AND e.execution_id = ANY(%s) GROUP BY c.position",
        (execution_ids,),
    )
    assert await cur.fetchone() == (True,)
    for table in ("step_state", "execution_state"):
        cur = await aconn.execute(
            f"SELECT count(*) FROM noetl.{table} WHERE execution_id = ANY(%s)", (execution_ids,)
        )
        assert await cur.fetchone() == (0,), table


async def check_projected_once(aconn: Conn, stored: list[Any]) -> None:
    """The tables equal the views, each step row was written by one committed transaction, and
    every committed checkpoint move went forward."""
    ids = sorted({ev.execution_id for ev in stored})
    assert await read_steps(aconn, "noetl.step_state", ids) == await read_steps(
        aconn, "noetl.step_status", ids
    )
    assert await read_executions(aconn, "noetl.execution_state", ids) == await read_executions(
        aconn, "noetl.execution_status", ids
    )
    cur = await aconn.execute(
        "SELECT execution_id, step, count(*) FROM public.step_writes GROUP BY 1, 2 ORDER BY 1, 2"
    )
    writes = await cur.fetchall()
    assert writes, "nothing was projected"
    assert {r[2] for r in writes} == {1}, writes
    cur = await aconn.execute(
        "SELECT count(*), count(*) FILTER (WHERE new < old) FROM public.checkpoint_moves"
    )
    moves, backwards = await cur.fetchone()  # type: ignore[misc]
    assert moves >= 1 and backwards == 0


async def test_a_refused_checkpoint_write_rolls_back_the_state_it_covers(
    database_url: str, aconn: Conn
) -> None:
    await aconn.execute(AUDIT)
    await aconn.execute(REFUSE_CHECKPOINT)
    assert await project_all(database_url) == 0  # the checkpoint row exists: the next is an UPDATE
    start = await checkpoint(aconn)
    assert start is not None
    stored = events()
    await insert_events(aconn, stored)

    await fail_projecting(database_url, "checkpoint write refused by the test")
    await not_passed(aconn, sorted({ev.execution_id for ev in stored}))
    cur = await aconn.execute("SELECT count(*) FROM public.step_writes")
    assert await cur.fetchone() == (0,)

    assert await project_all(database_url, max_events=3) == len(stored)
    assert await project_all(database_url) == 0
    assert (await checkpoint(aconn) or 0) > start
    await check_projected_once(aconn, stored)


async def test_a_connection_killed_after_the_state_writes_projects_nothing(
    database_url: str, aconn: Conn
) -> None:
    await aconn.execute(AUDIT)
    await aconn.execute(KILL_AFTER_STATE)
    stored = events()
    await insert_events(aconn, stored[:10])
    assert await project_all(database_url) == 10
    before = await checkpoint(aconn)
    await insert_events(aconn, stored[10:])

    bad = await fail_projecting(database_url, "connection|terminat|closed")
    assert bad.closed
    await not_passed(aconn, ["cp-2", "cp-3"])
    assert (await checkpoint(aconn) or 0) >= (before or 0)

    assert await project_all(database_url) == len(stored) - 10
    await check_projected_once(aconn, stored)
    conn = await connect(database_url)
    try:
        assert (await rebuild(conn)).executions == 4
    finally:
        await conn.close()
    cur = await aconn.execute("SELECT count(*) FROM public.checkpoint_moves WHERE new < old")
    assert await cur.fetchone() == (0,)  # the rebuild's move too
