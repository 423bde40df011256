"""Sharded projection (`projector project --shard K/N`) and the views' position over shards."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from projector.fold import fold_all
from projector.projection import Projector, Shard, project_chunk, rebuild
from tests.eventlog import insert_events, read_executions, read_steps
from tests.test_cli_errors import cli
from tests.test_projection import eventually, trace

Conn = psycopg.AsyncConnection[Any]

#: Rows of the fast views that the folds of the log do not have, and the other way round, in
#: one statement (one snapshot): 0 when they agree.
DIFFERENCE = """
SELECT (SELECT count(*) FROM ((TABLE noetl.step_status EXCEPT ALL TABLE noetl.step_status_log)
                              UNION ALL
                              (TABLE noetl.step_status_log EXCEPT ALL TABLE noetl.step_status)) d)
     + (SELECT count(*) FROM ((TABLE noetl.execution_status
                               EXCEPT ALL TABLE noetl.execution_status_log)
                              UNION ALL
                              (TABLE noetl.execution_status_log
                               EXCEPT ALL TABLE noetl.execution_status)) d)
"""


async def difference(conn: Conn) -> int:
    cur = await conn.execute(DIFFERENCE)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def shard_of(conn: Conn, execution_id: str, count: int) -> int:
    cur = await conn.execute(
        "SELECT mod(hashtext(%s)::bigint + 2147483648, %s)", (execution_id, count)
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def checkpoints(conn: Conn) -> dict[str, int]:
    cur = await conn.execute("SELECT name, position::text FROM noetl.projector_checkpoint")
    return {str(r[0]): int(r[1]) for r in await cur.fetchall()}


def test_shard_parse() -> None:
    assert Shard.parse("1/3") == Shard(1, 3)
    assert Shard(0, 2).checkpoint_name("default") == "default/0-of-2"
    for bad in ("2/2", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


@pytest.mark.parametrize("value", ["2/2", "x"])
def test_cli_rejects_a_bad_shard(
    value: str, database_url: str, capfd: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(
        ["--database-url", database_url, "project", "--once", "--shard", value], capfd
    )
    assert code == 2
    assert "--shard" in err


async def test_a_shard_projects_its_executions_and_the_views_stay_exact(
    aconn: Conn, database_url: str
) -> None:
    events = [e for i in range(20) for e in trace(f"s-{i}", n_steps=2, offset=i)]
    await insert_events(aconn, events)
    await Projector(database_url, shard=Shard(0, 2)).once()
    mine = {f"s-{i}" for i in range(20) if await shard_of(aconn, f"s-{i}", 2) == 0}
    assert 0 < len(mine) < 20
    assert set(await read_executions(aconn, "noetl.execution_state")) == mine
    # Both rows of the set exist (the other still at 0): the views fold what shard 1 owns.
    names = await checkpoints(aconn)
    assert set(names) == {"default/0-of-2", "default/1-of-2"}
    assert names["default/1-of-2"] == 0
    steps, execs = fold_all(events)
    assert await read_steps(aconn, "noetl.step_status") == steps
    assert await read_executions(aconn, "noetl.execution_status") == execs
    await Projector(database_url, shard=Shard(1, 2)).once()
    assert await read_executions(aconn, "noetl.execution_state") == execs
    assert await read_steps(aconn, "noetl.step_state") == steps
    assert await difference(aconn) == 0


async def test_new_shard_rows_start_at_the_unsharded_checkpoint(
    aconn: Conn, database_url: str
) -> None:
    await insert_events(aconn, trace("u-1"))
    await Projector(database_url).once()
    base = (await checkpoints(aconn))["default"]
    await insert_events(aconn, trace("u-2"))
    projected = await Projector(database_url, shard=Shard(0, 1)).once()
    assert projected == len(trace("u-2"))  # u-1 was not read again
    assert (await checkpoints(aconn))["default/0-of-1"] > base
    assert await difference(aconn) == 0


async def test_shards_run_side_by_side_but_not_beside_the_unsharded_projector(
    aconn: Conn, database_url: str
) -> None:
    await Projector(database_url, shard=Shard(0, 2)).once()  # the set's rows, committed
    await insert_events(aconn, trace("x-1") + trace("x-2"))
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as other:
        async with aconn.transaction():  # shard 0's chunk stays open (its locks held)
            assert await project_chunk(aconn, shard=Shard(0, 2)) is not None
            assert await project_chunk(other) is None
            assert await project_chunk(other, shard=Shard(0, 2)) is None
            assert await project_chunk(other, shard=Shard(1, 2)) is not None
        assert await project_chunk(other) is not None


async def test_rebuild_replaces_the_shard_checkpoints(aconn: Conn, database_url: str) -> None:
    await insert_events(aconn, trace("r-1"))
    await Projector(database_url, shard=Shard(1, 2)).once()
    await insert_events(aconn, trace("r-2"))
    result = await rebuild(aconn)
    assert await checkpoints(aconn) == {"default": result.position}
    assert await difference(aconn) == 0
    await Projector(database_url, shard=Shard(0, 2)).once()  # the set starts where it ended
    names = await checkpoints(aconn)
    assert set(names) == {"default/0-of-2", "default/1-of-2"}
    assert names["default/1-of-2"] == result.position <= names["default/0-of-2"]


async def test_no_checkpoint_row_is_left_that_nobody_moves(aconn: Conn, database_url: str) -> None:
    """The views' position is the lowest checkpoint: a row nobody moves would pin it, and past
    100,000 events every view would fold the whole log. Shards take over the unsharded row and an
    unsharded run takes over the shards' rows."""
    await insert_events(aconn, trace("p-1"))
    await Projector(database_url).once()
    await insert_events(aconn, trace("p-2"))
    for k in range(2):
        await Projector(database_url, shard=Shard(k, 2)).once()
    names = await checkpoints(aconn)
    assert set(names) == {"default/0-of-2", "default/1-of-2"}
    cur = await aconn.execute("SELECT noetl.projection_position()::text")
    row = await cur.fetchone()
    assert row is not None and int(row[0]) == min(names.values())
    await insert_events(aconn, trace("p-3"))
    await Projector(database_url).once()
    after = await checkpoints(aconn)
    assert set(after) == {"default"} and after["default"] > max(names.values())
    assert await difference(aconn) == 0


async def test_two_shards_with_the_sink_ingesting(aconn: Conn, database_url: str) -> None:
    """Two shards run while two sinks write; the views equal the folds of the log at every look,
    and the tables equal them once both caught up."""
    from projector.pgsink import PostgresEventSink

    executions = [trace(f"live-{i}", n_steps=4, offset=i) for i in range(60)]
    flat = [e for ex in executions for e in ex]
    stop = asyncio.Event()
    shards = [
        Projector(database_url, poll_interval=0.2, max_events=150, shard=Shard(k, 2))
        for k in range(2)
    ]
    running = [asyncio.create_task(p.run(stop)) for p in shards]
    looks: list[int] = []

    async def look() -> None:
        while not stop.is_set():
            looks.append(await difference(aconn))
            await asyncio.sleep(0.01)

    looking = asyncio.create_task(look())
    async with (
        PostgresEventSink(database_url, batch_size=100) as one,
        PostgresEventSink(database_url) as two,
    ):
        await asyncio.gather(one.emit_many(flat[::2]), *(two.emit(e) for e in flat[1::2]))

    async def both_projected() -> bool:
        state = await read_executions(aconn, "noetl.execution_state")
        return len(state) == 60

    await eventually(both_projected)
    for p in shards:
        await p.once()
    stop.set()
    await asyncio.gather(*running, looking)
    assert looks and set(looks) == {0}
    steps, execs = fold_all(flat)
    assert await read_steps(aconn, "noetl.step_state") == steps
    assert await read_executions(aconn, "noetl.execution_state") == execs
    assert await read_executions(aconn, "noetl.execution_status") == execs
    assert await difference(aconn) == 0
