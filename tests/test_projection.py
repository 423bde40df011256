"""The incremental projector and the rebuild, against the real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from projector.channels import NOTIFY_CHANNEL
from projector.envelope import ExecutorEvent
from projector.errors import ProjectorError, SchemaMissing
from projector.fold import fold_all
from projector.projection import (
    Projector,
    catch_up,
    checkpoint,
    connect,
    horizon,
    project_chunk,
    rebuild,
)
from projector.queries import query
from tests.eventlog import insert_events, read_executions, read_steps

T0 = datetime(2026, 2, 3, 4, 5, 6, 789012, tzinfo=UTC)
Conn = psycopg.AsyncConnection[Any]


def trace(execution_id: str, n_steps: int = 3, offset: int = 0) -> list[ExecutorEvent]:
    """A small successful execution, with the late RUNNING command.completed after step.exit."""
    out = [
        ExecutorEvent(
            execution_id=execution_id,
            event_type="playbook.initialized",
            step="pb",
            status="initialized",
            created_at=T0 + timedelta(seconds=offset),
        )
    ]
    for i in range(n_steps):
        for j, (etype, status) in enumerate(
            [
                ("step.enter", "RUNNING"),
                ("step.exit", "COMPLETED"),
                ("command.completed", "RUNNING"),
            ]
        ):
            out.append(
                ExecutorEvent(
                    execution_id=execution_id,
                    event_type=etype,
                    step=f"step{i}",
                    status=status,
                    created_at=T0 + timedelta(seconds=offset + 1 + i * 3 + j),
                )
            )
    out.append(
        ExecutorEvent(
            execution_id=execution_id,
            event_type="playbook.completed",
            step="pb",
            status="completed",
            created_at=T0 + timedelta(seconds=offset + 100),
        )
    )
    return out


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 30) -> None:
    """Wait until `check()` is true (a deadline against hangs, not a timing assertion)."""
    async with asyncio.timeout(seconds):
        for _ in itertools.count():
            if await check():
                return
            await asyncio.sleep(0.005)


async def has_checkpoint(conn: Conn) -> bool:
    return await checkpoint(conn) is not None


async def projected(conn: Conn, execution_id: str) -> bool:
    return execution_id in await read_executions(conn, "noetl.execution_state")


async def assert_tables_equal_views(conn: Conn, events: list[ExecutorEvent] | None = None) -> None:
    """The tables equal the views, and both the folds of the log (the views read the tables)."""
    steps_view = await read_steps(conn, "noetl.step_status")
    execs_view = await read_executions(conn, "noetl.execution_status")
    assert await read_steps(conn, "noetl.step_status_log") == steps_view
    assert await read_executions(conn, "noetl.execution_status_log") == execs_view
    assert await read_steps(conn, "noetl.step_state") == steps_view
    assert await read_executions(conn, "noetl.execution_state") == execs_view
    if events is not None:
        steps, execs = fold_all(events)
        assert steps_view == steps
        assert execs_view == execs


async def test_once_projects_everything(aconn: Conn, database_url: str) -> None:
    events = trace("a") + trace("b", 5)
    await insert_events(aconn, events)
    assert await Projector(database_url).once() == len(events)
    await assert_tables_equal_views(aconn, events)
    status = await read_executions(aconn, "noetl.execution_state")
    assert status["a"].status == "COMPLETED" and status["b"].steps_completed == 5
    # Caught up: nothing more to do, and a second run changes nothing.
    assert await Projector(database_url).once() == 0
    more = trace("a", 4, offset=1)[5:8]  # step3 of execution a, arriving later
    await insert_events(aconn, more)
    assert await Projector(database_url).once() == 3
    await assert_tables_equal_views(aconn, events + more)


async def test_interleaved_commits_are_not_skipped(aconn: Conn, database_url: str) -> None:
    a_events, b_events = trace("early"), trace("late")
    writer_a = await psycopg.AsyncConnection.connect(database_url)  # explicit transaction
    try:
        await insert_events(writer_a, a_events)  # A starts first: smaller txid, still open
        await insert_events(aconn, b_events)  # B commits while A is open
        projector = await connect(database_url)
        try:
            assert await catch_up(projector) == 0  # A holds the fence below B's rows
            states = await read_executions(aconn, "noetl.execution_state")
            assert states == {}
            await writer_a.commit()
            until = await horizon(projector)
            assert await catch_up(projector, until=until) == len(a_events) + len(b_events)
        finally:
            await projector.close()
    finally:
        await writer_a.close()
    await assert_tables_equal_views(aconn, a_events + b_events)


async def test_fence_passes_committed_rows_below_an_open_transaction(
    aconn: Conn, database_url: str
) -> None:
    first = trace("first")
    await insert_events(aconn, first)  # committed before the open transaction began
    writer = await psycopg.AsyncConnection.connect(database_url)
    try:
        await insert_events(writer, trace("open"))
        projector = await connect(database_url)
        try:
            # Other sessions on the server may hold the fence back for a moment: wait until it
            # passes the committed rows (the open writer started after them).
            cur = await aconn.execute("SELECT max(txid)::text FROM noetl.event")
            row = await cur.fetchone()
            assert row is not None
            assert await catch_up(projector, until=int(row[0]) + 1) == len(first)
            assert set(await read_executions(aconn, "noetl.execution_state")) == {"first"}
        finally:
            await projector.close()
        await writer.rollback()  # an aborted writer leaves nothing behind
    finally:
        await writer.close()
    assert await Projector(database_url).once() == 0
    await assert_tables_equal_views(aconn)


async def test_chunks_never_split_a_transaction(aconn: Conn, database_url: str) -> None:
    big = trace("big", 4)  # 14 rows in one transaction
    await insert_events(aconn, big)
    for i in range(5):  # five single-row transactions
        await insert_events(aconn, trace(f"s{i}", 0)[:1])
    conn = await connect(database_url)
    try:
        until = await horizon(conn)
        sizes = []
        while (result := await project_chunk(conn, max_events=3)) is None or (
            result.position < until or result.events
        ):
            if result is not None and result.events:
                sizes.append(result.events)
    finally:
        await conn.close()
    # The 14 rows of one transaction form one chunk; the single-row transactions at most 3 a chunk
    # (fewer when another session's open transaction holds the fence between them).
    assert sizes[0] == 14 and sum(sizes) == 19 and max(sizes[1:]) <= 3
    await assert_tables_equal_views(aconn)


async def test_failure_mid_transaction_replays_safely(aconn: Conn, database_url: str) -> None:
    events = trace("x") + trace("y")
    await insert_events(aconn, events)
    # A real failure inside the projector's transaction, after step_state was written.
    await aconn.execute(
        "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN RAISE EXCEPTION 'simulated crash'; END $$"
    )
    await aconn.execute(
        "CREATE TRIGGER boom BEFORE INSERT ON noetl.execution_state "
        "FOR EACH ROW EXECUTE FUNCTION boom()"
    )
    with pytest.raises(ProjectorError, match="simulated crash"):
        await Projector(database_url).once()
    assert await read_steps(aconn, "noetl.step_state") == {}
    # The checkpoint did not pass the events (an empty chunk may have created it earlier, when
    # another session's transaction held the fence back).
    cur = await aconn.execute("SELECT min(txid)::text FROM noetl.event")
    row = await cur.fetchone()
    assert row is not None
    position = await checkpoint(aconn)
    assert position is None or position <= int(row[0])
    await aconn.execute("DROP TRIGGER boom ON noetl.execution_state")
    assert await Projector(database_url).once() == len(events)
    await assert_tables_equal_views(aconn, events)


async def test_cancelled_run_replays_safely(aconn: Conn, database_url: str) -> None:
    events = [ev for i in range(30) for ev in trace(f"c{i}", 2)]
    for i in range(0, len(events), 8):
        await insert_events(aconn, events[i : i + 8])
    task = asyncio.create_task(Projector(database_url, max_events=5).run(asyncio.Event()))
    await eventually(lambda: has_checkpoint(aconn))
    task.cancel()  # abandon it wherever it is, possibly inside a transaction
    with pytest.raises(asyncio.CancelledError):
        await task
    await Projector(database_url).once()
    await assert_tables_equal_views(aconn, events)


async def test_two_instances_share_the_work(aconn: Conn, database_url: str) -> None:
    executions = [trace(f"e{i}", 2) for i in range(40)]
    done = asyncio.Event()
    target: list[int] = []

    async def writer() -> None:
        conn = await psycopg.AsyncConnection.connect(database_url, autocommit=True)
        try:
            for evs in executions:
                await insert_events(conn, evs)
                await asyncio.sleep(0)
            target.append(await horizon(conn))
        finally:
            await conn.close()
            done.set()

    async def instance() -> int:
        conn = await connect(database_url)
        total = 0
        try:
            while True:
                finished = done.is_set()
                result = await project_chunk(conn, max_events=7)
                if result is None:
                    await asyncio.sleep(0.001)
                    continue
                total += result.events
                if finished and result.events == 0 and result.position >= target[0]:
                    return total
                await asyncio.sleep(0)
        finally:
            await conn.close()

    _, one, two = await asyncio.gather(writer(), instance(), instance())
    all_events = [ev for evs in executions for ev in evs]
    assert one + two == len(all_events)  # every event projected exactly once
    await assert_tables_equal_views(aconn, all_events)


async def test_rebuild_equals_views(aconn: Conn, database_url: str) -> None:
    events = trace("r1") + trace("r2", 4)
    await insert_events(aconn, events)
    await Projector(database_url).once()
    await aconn.execute("UPDATE noetl.step_state SET status = 'WRONG'")
    await aconn.execute("DELETE FROM noetl.execution_state WHERE execution_id = 'r1'")
    conn = await connect(database_url)
    try:
        result = await rebuild(conn)
    finally:
        await conn.close()
    assert (result.steps, result.executions) == (7, 2)
    await assert_tables_equal_views(aconn, events)
    # The rebuild moved the checkpoint to its fence (rows above a fence held back by another
    # session's transaction are read again, harmlessly).
    assert await Projector(database_url).once() <= len(events)
    await assert_tables_equal_views(aconn, events)
    more = trace("r3")
    await insert_events(aconn, more)
    assert await Projector(database_url).once() == len(more)
    await assert_tables_equal_views(aconn, events + more)


@pytest.mark.parametrize("workers", [1, 3])
async def test_rebuild_split_between_workers_equals_the_fold(
    aconn: Conn, database_url: str, workers: int
) -> None:
    # Errors that COPY text must escape (newline, tab, backslash, a quote, non-ASCII) travel from
    # the workers to the rebuild's transaction unchanged; 3 workers over 8 executions leave
    # parts with none or one execution too.
    error = 'line one\nline\ttwo \\ "quoted" \u00e9\u2603'
    events = [e for i in range(7) for e in trace(f"w{i}", 1 + i % 3, offset=i)]
    events += [
        ev("wf", 1, "playbook.started", "STARTED", "tests/pb"),
        ev("wf", 2, "call.error", "FAILED", "a", context={"error": error}),
        ev("wf", 3, "playbook.failed", "FAILED", "playbook", context={"error": error}),
    ]
    await insert_events(aconn, events)
    await Projector(database_url).once()
    await aconn.execute("UPDATE noetl.step_state SET status = 'WRONG'")
    await aconn.execute("DELETE FROM noetl.execution_state WHERE execution_id = 'w1'")
    conn = await connect(database_url)
    try:
        result = await rebuild(conn, workers=workers)
    finally:
        await conn.close()
    steps, execs = fold_all(events)
    assert (result.steps, result.executions) == (len(steps), len(execs)) == (len(steps), 8)
    assert (await read_steps(aconn, "noetl.step_state"))[("wf", "a")].error == error
    assert (await read_executions(aconn, "noetl.execution_state"))["wf"].error == error
    await assert_tables_equal_views(aconn, events)


async def test_rebuild_rows_survive_the_callers_text_settings(
    aconn: Conn, database_url: str
) -> None:
    # The workers' rows travel as COPY text: new sessions (the workers) write dates in the
    # database's DateStyle, and the caller's session may read them with another DateStyle and
    # another client encoding. Both ends of the copy use the same settings in the transaction.
    error = "caf\u00e9 \u2603"
    events = [
        *trace("d1"),
        ev("d2", 1, "playbook.started", "STARTED", "tests/pb"),
        ev("d2", 2, "call.error", "FAILED", "a", context={"error": error}),
    ]
    await insert_events(aconn, events)
    cur = await aconn.execute("SELECT current_database()")
    row = await cur.fetchone()
    assert row is not None
    await aconn.execute(
        sql.SQL("ALTER DATABASE {} SET DateStyle = 'SQL, DMY'").format(sql.Identifier(row[0]))
    )
    conn = await connect(database_url)
    try:
        await conn.execute("SET DateStyle = 'ISO, MDY'")
        await conn.execute("SET client_encoding = 'LATIN1'")
        await conn.execute("SET TimeZone = 'Pacific/Kiritimati'")
        await rebuild(conn, workers=2)
    finally:
        await conn.close()
    assert (await read_steps(aconn, "noetl.step_state"))[("d2", "a")].error == error
    await assert_tables_equal_views(aconn, events)


async def test_rebuild_of_an_empty_log_empties_the_tables(aconn: Conn, database_url: str) -> None:
    # No event to take part bounds from: one part, no rows, the stale state rows gone.
    await aconn.execute(
        "INSERT INTO noetl.execution_state (execution_id, status, started_at, last_event_at, "
        "event_count, step_count, steps_completed, steps_failed, steps_running, open_units, "
        "settled) VALUES ('stale', 'RUNNING', now(), now(), 1, 0, 0, 0, 0, 0, true)"
    )
    conn = await connect(database_url)
    try:
        result = await rebuild(conn, workers=2)
    finally:
        await conn.close()
    assert (result.steps, result.executions) == (0, 0)
    assert await read_executions(aconn, "noetl.execution_state") == {}


async def test_readers_see_the_old_rows_until_the_rebuild_commits(
    aconn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import projector.projection as projection

    events = trace("s1") + trace("s2", 4)
    await insert_events(aconn, events)
    await Projector(database_url).once()
    await aconn.execute("UPDATE noetl.step_state SET status = 'WRONG'")
    seen: list[list[tuple[Any, ...]]] = []
    real = projection._copy_in

    async def copy_in(*args: Any) -> int:  # a reader looks after each of the rebuild's COPYs
        n = await real(*args)
        cur = await aconn.execute("SELECT DISTINCT status FROM noetl.step_state")
        seen.append(await cur.fetchall())
        return n

    monkeypatch.setattr(projection, "_copy_in", copy_in)
    conn = await connect(database_url)
    try:
        await rebuild(conn, workers=2)
    finally:
        await conn.close()
    assert seen == [[("WRONG",)], [("WRONG",)]]  # the rows written, not yet committed
    await assert_tables_equal_views(aconn, events)


@pytest.mark.parametrize("broken_query", ["projection.part_steps", "projection.part_executions"])
async def test_a_failing_rebuild_worker_leaves_the_old_rows(
    aconn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch, broken_query: str
) -> None:
    import projector.projection as projection

    events = trace("f1") + trace("f2", 4)
    await insert_events(aconn, events)
    await Projector(database_url).once()
    await aconn.execute("UPDATE noetl.step_state SET status = 'WRONG'")
    before = await checkpoint(aconn)
    real = projection.query

    def broken(name: str) -> Any:  # the workers' first or second statement fails
        if name == broken_query:
            return "COPY (SELECT 1 / 0) TO STDOUT"
        return real(name)

    monkeypatch.setattr(projection, "query", broken)
    conn = await connect(database_url)
    try:
        with pytest.raises(ProjectorError, match="division by zero"):
            await rebuild(conn, workers=2)
        assert not conn.info.transaction_status  # idle: rolled back, usable again
    finally:
        await conn.close()
    cur = await aconn.execute("SELECT DISTINCT status FROM noetl.step_state")
    assert await cur.fetchall() == [("WRONG",)]  # not one row of the failed rebuild
    assert len(await read_executions(aconn, "noetl.execution_state")) == 2
    assert await checkpoint(aconn) == before


async def test_a_rebuild_whose_workers_queue_behind_an_alter_table_gives_up(
    aconn: Conn, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ALTER TABLE asked for while the rebuild holds its locks waits for the rebuild; its workers
    then wait behind the ALTER. The workers' bounded lock wait ends that: the rebuild rolls back
    with a message that says why, and the ALTER goes through."""
    import projector.projection as projection

    await insert_events(aconn, trace("q1") + trace("q2", 4))
    await Projector(database_url).once()
    before = await checkpoint(aconn)
    monkeypatch.setattr(projection, "REBUILD_WORKER_LOCK_WAIT", 0.5)
    starting, go = asyncio.Event(), asyncio.Event()
    real = projection._rebuild_part

    async def held(*args: Any) -> None:  # the workers start once the ALTER is queued
        starting.set()
        await go.wait()
        await real(*args)

    monkeypatch.setattr(projection, "_rebuild_part", held)
    conn = await connect(database_url)
    alter = await psycopg.AsyncConnection.connect(database_url)
    try:
        task = asyncio.create_task(rebuild(conn, workers=2))
        await asyncio.wait_for(starting.wait(), 60)
        altering = asyncio.create_task(
            alter.execute("ALTER TABLE noetl.event ADD COLUMN probe integer")
        )

        async def queued() -> bool:
            cur = await aconn.execute(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'"
            )
            return await cur.fetchone() == (1,)

        for _ in range(600):
            if await queued():
                break
            await asyncio.sleep(0.05)
        else:
            pytest.fail("the ALTER TABLE never queued behind the rebuild")
        go.set()
        with pytest.raises(ProjectorError, match="exclusive lock"):
            await asyncio.wait_for(task, 60)
        await asyncio.wait_for(altering, 60)  # the ALTER went through once the rebuild gave up
        await alter.rollback()
    finally:
        await conn.close()
        await alter.close()
    assert await checkpoint(aconn) == before
    assert len(await read_executions(aconn, "noetl.execution_state")) == 2


def ev(
    execution_id: str, n: int, event_type: str, status: str, step: str, **kw: object
) -> ExecutorEvent:
    return ExecutorEvent(
        execution_id=execution_id,
        event_id=str(n),
        event_type=event_type,
        step=step,
        status=status,
        created_at=T0 + timedelta(seconds=n),
        **kw,  # type: ignore[arg-type]
    )


async def test_a_cancel_in_a_later_chunk_cancels_projected_steps(
    aconn: Conn, database_url: str
) -> None:
    first = [
        ev("k", 1, "playbook_started", "STARTED", "tests/pb"),
        ev("k", 2, "command.issued", "PENDING", "a", meta={"command_id": "c1"}),
        ev("k", 3, "command.started", "RUNNING", "a", meta={"command_id": "c1"}),
        ev("k", 4, "step.exit", "COMPLETED", "b"),
    ]
    await insert_events(aconn, first)
    await Projector(database_url).once()
    steps = await read_steps(aconn, "noetl.step_state")
    assert steps[("k", "a")].status == "RUNNING" and steps[("k", "a")].iterations_running == 1
    cancel = [ev("k", 9, "playbook_cancelled", "CANCELLED", "playbook")]
    await insert_events(aconn, cancel)  # names no step, but changes step a
    conn = await connect(database_url)
    try:
        result = await catch_up(conn, until=await horizon(conn))
    finally:
        await conn.close()
    assert result == 1
    steps = await read_steps(aconn, "noetl.step_state")
    assert (steps[("k", "a")].status, steps[("k", "a")].iterations_running) == ("CANCELLED", 0)
    assert steps[("k", "b")].status == "COMPLETED"
    state = (await read_executions(aconn, "noetl.execution_state"))["k"]
    assert (state.status, state.settled, state.open_units) == ("CANCELLED", True, 0)
    await assert_tables_equal_views(aconn, first + cancel)
    # A later end undoes the cancel: step a runs again, b stays COMPLETED.
    undo = [ev("k", 10, "playbook_failed", "FAILED", "playbook")]
    await insert_events(aconn, undo)
    assert await Projector(database_url).once() == 1
    steps = await read_steps(aconn, "noetl.step_state")
    assert (steps[("k", "a")].status, steps[("k", "a")].iterations_running) == ("RUNNING", 1)
    assert steps[("k", "b")].status == "COMPLETED"
    await assert_tables_equal_views(aconn, first + cancel + undo)


async def test_chunk_keys_are_mapped_steps_without_bookkeeping(
    aconn: Conn, database_url: str
) -> None:
    events = [
        ev("m", 1, "command.issued", "PENDING", "fetch:task_sequence", meta={"command_id": "c"}),
        ev("m", 2, "loop.item", "RUNNING", "fetch"),
        ev("m", 3, "batch.accepted", "ACCEPTED", "events.batch"),
        ev("m", 4, "checkpoint.committed", "OK", "checkpointer"),
        ev("m", 5, "command.heartbeat", "RUNNING", "fetch"),
        ev(
            "m",
            6,
            "command.completed",
            "COMPLETED",
            "fetch:task_sequence",
            meta={"command_id": "c"},
        ),
    ]
    await insert_events(aconn, events)  # one transaction: one chunk
    conn = await connect(database_url)
    try:
        until = await horizon(conn)
        chunks = []
        while (
            (result := await project_chunk(conn)) is None
            or result.events
            or (result.position < until)
        ):
            if result is not None and result.events:
                chunks.append((result.events, result.steps, result.executions))
    finally:
        await conn.close()
    assert chunks == [(6, 1, 1)]
    steps = await read_steps(aconn, "noetl.step_state")
    assert list(steps) == [("m", "fetch")]
    assert (steps[("m", "fetch")].status, steps[("m", "fetch")].event_count) == ("COMPLETED", 3)
    await assert_tables_equal_views(aconn, events)


async def test_chunk_statements_are_never_jit_compiled(aconn: Conn) -> None:
    # Before the statistics exist (a new database, a partitioned parent autovacuum never
    # analyzes) the planner's estimates crossed jit_above_cost, and compiling the chunk's
    # statements took seconds per chunk; PL/pgSQL, where the fold spends its time, is never
    # compiled anyway. projection.serial turns it off for the chunk's transaction.
    cur = await aconn.execute("SELECT pg_jit_available()")
    row = await cur.fetchone()
    if row is None or not row[0]:
        pytest.skip("this server has no JIT: nothing to turn off")
    await insert_events(aconn, trace("jit"))
    await aconn.execute("SET jit = on")
    await aconn.execute("SET jit_above_cost = 0")
    explain = "EXPLAIN (ANALYZE, FORMAT JSON) " + query("projection.upsert_executions")

    async def compiled() -> bool:
        cur = await aconn.execute(explain, {"execution_ids": ["jit"]})
        plan = await cur.fetchone()
        assert plan is not None
        return "JIT" in plan[0][0]

    async with aconn.transaction(force_rollback=True):
        assert await compiled()  # the check can see it
    async with aconn.transaction(force_rollback=True):
        await aconn.execute(query("projection.serial"))
        assert not await compiled()
    assert await compiled()  # SET LOCAL: the session's setting is back after the chunk


async def test_run_wakes_on_notify(aconn: Conn, database_url: str) -> None:
    stop = asyncio.Event()
    # Polling every hour: only the NOTIFY can wake it within the test.
    task = asyncio.create_task(Projector(database_url, poll_interval=3600).run(stop))
    await eventually(lambda: has_checkpoint(aconn))  # it LISTENs before its first chunk
    events = trace("n")
    await insert_events(aconn, events)
    await aconn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(NOTIFY_CHANNEL)))
    try:
        await eventually(lambda: projected(aconn, "n"))
    finally:
        stop.set()
        await aconn.execute(sql.SQL("NOTIFY {}").format(sql.Identifier(NOTIFY_CHANNEL)))
        await asyncio.wait_for(task, 30)
    await assert_tables_equal_views(aconn, events)


async def test_live_projector_with_the_real_sink(aconn: Conn, database_url: str) -> None:
    """Two sinks write concurrently (group commit and batches) while two projectors run."""
    from projector.pgsink import PostgresEventSink

    executions = [trace(f"live-{i}", n_steps=4, offset=i) for i in range(60)]
    flat = [e for ex in executions for e in ex]
    stop = asyncio.Event()
    projectors = [Projector(database_url, poll_interval=0.2, max_events=150) for _ in range(2)]
    running = [asyncio.create_task(p.run(stop)) for p in projectors]
    async with (
        PostgresEventSink(database_url, batch_size=100) as one,
        PostgresEventSink(database_url) as two,
    ):
        await asyncio.gather(
            one.emit_many(flat[::2]),
            *(two.emit(e) for e in flat[1::2]),
            one.emit_many(reversed(flat)),  # all duplicates or racing the others
        )
    await eventually(lambda: projected(aconn, "live-59"))
    stop.set()
    await asyncio.gather(*running)
    await Projector(database_url).once()  # whatever the running ones had not reached yet
    await assert_tables_equal_views(aconn)
    steps, execs = fold_all(flat)
    assert await read_steps(aconn, "noetl.step_state") == steps
    assert await read_executions(aconn, "noetl.execution_state") == execs


async def test_run_retries_an_unreachable_server_until_stopped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Transient errors wait on the backoff (from the poll interval, capped at 30 s); `stop`
    wakes the wait."""
    stop = asyncio.Event()
    projector = Projector("postgresql://postgres@127.0.0.1:1/none", poll_interval=3600)
    with caplog.at_level(logging.WARNING, logger="projector.projection"):
        task = asyncio.create_task(projector.run(stop))

        async def retrying() -> bool:
            return any("retrying in 30.0 s" in r.getMessage() for r in caplog.records)

        await eventually(retrying)
        stop.set()
        await asyncio.wait_for(task, 30)  # returns without error once stopped


async def test_run_raises_what_retrying_cannot_fix(empty_database_url: str) -> None:
    with pytest.raises(SchemaMissing, match="projector db upgrade"):
        await asyncio.wait_for(Projector(empty_database_url).run(asyncio.Event()), 30)


def test_poll_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="poll_interval"):
        Projector("postgresql://unused", poll_interval=0)
