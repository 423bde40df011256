"""Partition upkeep: rows already in the default partition never block creating their month."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from projector import PostgresEventSink
from tests.factories import event

Conn = psycopg.AsyncConnection[Any]

COLUMNS = "execution_id, event_id, created_at, context, txid::text, ingested_at, content_hash"


def month_start(months_ahead: int) -> datetime:
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + months_ahead
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


async def rows(conn: Conn) -> dict[str, tuple[Any, ...]]:
    """Every stored row by event id: its columns, then the partition that holds it."""
    cur = await conn.execute(
        f"SELECT event_id, {COLUMNS}, tableoid::regclass::text FROM noetl.event ORDER BY 1"
    )
    return {r[0]: tuple(r[1:]) for r in await cur.fetchall()}


async def test_rows_in_the_default_partition_move_into_their_new_month(
    database_url: str, aconn: Conn
) -> None:
    """Months 7 and 9 ahead have rows in the default partition; creating month 7 moves its rows
    (every column as it was, the transaction id included) and leaves month 9's where they are."""
    m7, m9 = month_start(7), month_start(9)
    batch = [
        event("e", "a", at=(m7 - event().created_at).total_seconds()),  # first instant of m7
        event("e", "b", at=(m7 - event().created_at).total_seconds() + 86400 * 20),
        event("e", "c", at=(m7 - event().created_at).total_seconds() - 0.000001),  # m6: last one
        event("e", "d", at=(m9 - event().created_at).total_seconds() + 3600),
    ]
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many(batch)
    before = await rows(aconn)
    assert {r[-1] for r in before.values()} == {"noetl.event_default"}
    cur = await aconn.execute("SELECT noetl.ensure_event_partitions(%s, 1)", (m7.date(),))
    assert await cur.fetchone() == (1,)
    after = await rows(aconn)
    part = f"noetl.event_{m7:%Y_%m}"
    assert {k: v[-1] for k, v in after.items()} == {
        "a": part,
        "b": part,
        "c": "noetl.event_default",
        "d": "noetl.event_default",
    }
    assert {k: v[:-1] for k, v in after.items()} == {k: v[:-1] for k, v in before.items()}
    # The new partition is a full one: the unique key holds there, the sink sees its rows.
    with pytest.raises(psycopg.errors.UniqueViolation):
        await aconn.execute(
            "INSERT INTO noetl.event (execution_id, event_id, event_type, created_at) "
            "SELECT execution_id, event_id, 'x', created_at FROM noetl.event WHERE event_id = 'a'"
        )
    async with PostgresEventSink(database_url) as sink:
        again = await sink.emit_many([*batch, batch[0].model_copy(update={"status": "FAILED"})])
    assert again.outcomes == ["duplicate"] * 4 + ["conflict"]
    cur = await aconn.execute("SELECT noetl.ensure_event_partitions(%s, 3)", (m7.date(),))
    assert await cur.fetchone() == (2,)  # months 8 and 9; 9's row moves in too
    assert (await rows(aconn))["d"][-1] == f"noetl.event_{m9:%Y_%m}"


def test_db_partitions_is_not_blocked_by_a_future_dated_row(database_url: str) -> None:
    """One event dated five months ahead sits in the default partition: `projector db
    partitions --ahead 6` used to fail for every month because of it."""
    ahead = month_start(5) + timedelta(days=3)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO noetl.event (execution_id, event_id, event_type, created_at) "
            "VALUES ('future', '1', 't', %s)",
            (ahead,),
        )
        command = ["db", "partitions", "--ahead", "6"]
        done = subprocess.run(
            [sys.executable, "-m", "projector", "--database-url", database_url, *command],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        where = conn.execute("SELECT tableoid::regclass::text FROM noetl.event").fetchone()
    assert "created 3 partition(s)" in done.stdout  # months 4 to 6 ahead were missing
    assert where == (f"noetl.event_{ahead:%Y_%m}",)
