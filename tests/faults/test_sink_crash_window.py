"""The sink's retry after PostgreSQL crashed between two attempts at one batch, made exact.

The sink recognises "an earlier attempt of mine committed after all" by the earlier attempt's
transaction id (`pg_xact_status`). PostgreSQL hands out again, after a crash, every transaction id
that had not reached the WAL; so an id from before the crash can name another, committed,
transaction after it (or lie "in the future"). These tests put the crash exactly there: they wrap
`projector.pglookup.begin` to crash and restart the server right after the first attempt got its
id, and let another transaction take that id (or leave the next one open). The sink no longer
depends on such ids for rejections that have a position (they are kept once by their unique key)
and never asks PostgreSQL about an id past the next one to be assigned; the last test pins down
that a redelivered rejection is kept once. A broken set-up fails them for real (``pytest.fail``,
not an assertion).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pytest

from projector import PostgresEventSink, RawEnvelope, pglookup
from tests.faults.harness import assert_stored_exactly, keys, workload
from tests.faults.servers import PgServer

pytestmark = pytest.mark.slow

BAD = RawEnvelope(b'{"execution_id": {"not": "an id"}}', source="nats:t.events.x", position=7)


async def rejected_rows(url: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = await conn.execute("SELECT source, position FROM noetl.event_rejected")
        return await cur.fetchall()


def crash_after_first_begin(
    monkeypatch: pytest.MonkeyPatch,
    pg: PgServer,
    url: str,
    after_restart: Callable[[str], Awaitable[None]],
    before: Callable[[], Awaitable[None]] | None = None,
) -> list[str]:
    """Wrap `pglookup.begin`: the first call gets its transaction id, then the server is killed
    and restarted and `after_restart(txid)` runs; the sink's next statement finds the connection
    dead and retries. Returns the transaction ids the attempts got."""
    original = pglookup.begin
    txids: list[str] = []

    async def begin(*args: Any) -> str:
        if not txids and before is not None:
            await before()
        txid = await original(*args)
        txids.append(txid)
        if len(txids) == 1:
            await asyncio.to_thread(pg.kill9)
            await asyncio.to_thread(pg.start)
            await after_restart(txid)
        return txid

    monkeypatch.setattr(pglookup, "begin", begin)
    return txids


async def test_rejections_survive_a_crash_whose_transaction_id_is_reused(
    pg: PgServer, fault_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reused: list[str] = []

    async def take_the_same_id(txid: str) -> None:
        async with await psycopg.AsyncConnection.connect(pg.url()) as conn:  # commits at the end
            cur = await conn.execute("SELECT pg_current_xact_id()::text")
            row = await cur.fetchone()
            assert row is not None
            reused.append(str(row[0]))

    txids = crash_after_first_begin(monkeypatch, pg, fault_db, take_the_same_id)
    events = workload(1)
    async with PostgresEventSink(fault_db) as sink:
        result = await sink.emit_many([*events, BAD])
    if reused != txids[:1] or len(txids) < 2:  # not an expected failure: the set-up broke
        pytest.fail(f"premise: the id {txids[:1]} given out again ({reused}), then a retry")
    assert [r.position for r in result.rejected] == [len(events)]
    await assert_stored_exactly(fault_db, keys(events))
    assert await rejected_rows(fault_db) == [("nats:t.events.x", 7)]


async def test_a_valid_event_is_not_rejected_for_a_transaction_id_in_the_future(
    pg: PgServer, fault_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[psycopg.AsyncConnection[Any]] = []

    async def hold_an_id() -> None:
        # Another session takes the next id and is still open when the server dies, so the
        # sink's first attempt gets the one after it.
        conn = await psycopg.AsyncConnection.connect(pg.url())
        await conn.execute("SELECT pg_current_xact_id()")
        held.append(conn)

    async def nothing(txid: str) -> None:
        return None

    crash_after_first_begin(monkeypatch, pg, fault_db, nothing, before=hold_an_id)
    events = workload(1)[:1]
    try:
        async with PostgresEventSink(fault_db) as sink:
            result = await sink.emit_many([*events, BAD])
    finally:
        for conn in held:
            await conn.close()
    reasons = [r.reason for r in result.rejected]
    assert len(reasons) == 1, reasons
    await assert_stored_exactly(fault_db, keys(events))


async def test_a_redelivered_rejection_is_kept_once(fault_db: str) -> None:
    async with PostgresEventSink(fault_db) as sink:
        for _ in range(2):  # what the bridge does when JetStream delivers the message again
            result = await sink.emit_many([BAD])
            assert [r.position for r in result.rejected] == [0]
    assert await rejected_rows(fault_db) == [("nats:t.events.x", 7)]
