"""PostgresEventSink against a real PostgreSQL: idempotency, conflicts, rejections, retries."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import string
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from projector import DatabaseUnavailable, EventConflict, SchemaMissing, pglookup
from projector.pgsink import PostgresEventSink, RawEnvelope
from tests.factories import event, events

Conn = psycopg.AsyncConnection[Any]


async def count(conn: Conn, sql: str = "SELECT count(*) FROM noetl.event") -> int:
    cur = await conn.execute(sql)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def lose_next_commit(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """From now on, the next COMMIT goes through but raises as if the connection died before the
    answer came; the list returned holds 0 once that happened."""
    lose = [1]
    real_commit = psycopg.AsyncConnection.commit

    async def commit(self: psycopg.AsyncConnection[Any]) -> None:
        await real_commit(self)
        if lose[0]:
            lose[0] -= 1
            raise psycopg.OperationalError("connection lost after COMMIT")

    monkeypatch.setattr(psycopg.AsyncConnection, "commit", commit)
    return lose


async def test_stores_each_event_once_and_counts_duplicates(database_url: str, aconn: Conn) -> None:
    batch = events(5000)
    async with PostgresEventSink(database_url, batch_size=1000) as sink:
        first = await sink.emit_many(batch)
        again = await sink.emit_many(batch)
    assert first.counts() == {"inserted": 5000, "duplicates": 0, "conflicts": 0, "rejected": 0}
    assert again.counts() == {"inserted": 0, "duplicates": 5000, "conflicts": 0, "rejected": 0}
    assert set(first.outcomes) == {"inserted"} and set(again.outcomes) == {"duplicate"}
    assert await count(aconn) == 5000
    cur = await aconn.execute(
        "SELECT execution_id, event_id, step, status, context, created_at FROM noetl.event "
        "WHERE event_id = '4999'"
    )
    row = await cur.fetchone()
    assert row is not None
    assert row[:5] == ("exec-71", "4999", "s9", "COMPLETED", {"n": "4999"})
    assert row[5] == batch[4999].created_at


async def test_reused_id_with_other_content_is_a_conflict(database_url: str, aconn: Conn) -> None:
    original = event(status="RUNNING")
    same_time = original.model_copy(update={"status": "FAILED"})
    # A different created_at routes to another partition: the unique key cannot see it there,
    # the sink's lookup must.
    other_month = original.model_copy(
        update={"created_at": original.created_at - timedelta(days=400)}
    )
    async with PostgresEventSink(database_url) as sink:
        assert await sink.emit(original) == "inserted"
        result = await sink.emit_many([same_time, other_month, original])
        with pytest.raises(EventConflict) as info:
            await sink.emit(same_time)
    assert result.outcomes == ["conflict", "conflict", "duplicate"]
    assert result.conflicts == 2 and result.conflict_ids == [("exec-1", "1"), ("exec-1", "1")]
    assert info.value.event_id == "1"
    cur = await aconn.execute("SELECT status FROM noetl.event")
    assert await cur.fetchall() == [("RUNNING",)]  # the stored row is left unchanged


async def test_duplicates_inside_one_batch(database_url: str, aconn: Conn) -> None:
    a = event(event_id="1")
    changed = a.model_copy(update={"context": {"other": True}})
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many([a, a, changed, event(event_id="2")])
    assert result.outcomes == ["inserted", "duplicate", "conflict", "inserted"]
    assert await count(aconn) == 2


async def test_derived_ids_make_redelivery_idempotent(database_url: str, aconn: Conn) -> None:
    no_id = event(event_id=None)
    async with PostgresEventSink(database_url) as sink:
        assert await sink.emit(no_id) == "inserted"
        assert await sink.emit(no_id) == "duplicate"
    cur = await aconn.execute("SELECT event_id FROM noetl.event")
    assert await cur.fetchall() == [(no_id.resolved_event_id(),)]


async def test_bad_envelopes_are_rejected_and_the_rest_stored(
    database_url: str, aconn: Conn
) -> None:
    good = event(event_id="good")
    items: list[Any] = [
        RawEnvelope(b'{"event_type": "x"}', "file.ndjson", 7),
        good,
        RawEnvelope(b"\xff\x00not utf-8", "nats:noetl.events.e", 8),
        {"execution_id": "e", "event_type": "t", "created_at": "2026-11-20T00:00:00Z"},
    ]
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many(items)
    assert result.outcomes == ["rejected", "inserted", "rejected", "inserted"]
    assert [(r.position, r.line) for r in result.rejected] == [(0, 7), (2, 8)]
    assert "execution_id is required" in result.rejected[0].reason
    assert "Invalid JSON" in result.rejected[1].reason
    assert await count(aconn) == 2
    cur = await aconn.execute(
        "SELECT raw, raw_bytes, source, position, reason FROM noetl.event_rejected ORDER BY id"
    )
    rows = await cur.fetchall()
    assert rows[0][:4] == ('{"event_type": "x"}', None, "file.ndjson", 7)
    assert rows[1][1] == b"\xff\x00not utf-8"  # exact bytes kept where text cannot hold them
    assert rows[1][2:4] == ("nats:noetl.events.e", 8)
    assert "\\xff" in rows[1][0]


def random_text(n: int, seed: int = 0) -> str:
    """`n` characters of random letters and digits: text no compression makes much shorter."""
    return "".join(random.Random(seed).choices(string.ascii_letters + string.digits, k=n))


POISON_TRIGGER = """
    CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.step = 'poison' THEN
        RAISE EXCEPTION 'poisoned step' USING ERRCODE = '22023';
      END IF;
      RETURN NEW;
    END $$;
    CREATE TRIGGER poison BEFORE INSERT ON noetl.event FOR EACH ROW EXECUTE FUNCTION poison();
"""


@pytest.mark.parametrize(
    ("setup", "change", "state", "message"),
    [
        # Stand-in for a value validation does not catch: the server raises a data exception.
        (POISON_TRIGGER, {"step": "poison"}, "22023", "poisoned step"),
        # Index entries over 2,704 bytes: a program limit, not a data exception.
        ("", {"event_id": random_text(3000)}, "54000", "exceeds btree version 4 maximum 2704"),
        ("", {"step": random_text(3000)}, "54000", "exceeds btree version 4 maximum 2704"),
        (
            "ALTER TABLE noetl.event ADD CONSTRAINT no_x CHECK (event_type <> 'x')",
            {"event_type": "x"},
            "23514",
            'violates check constraint "no_x"',
        ),
    ],
    ids=["data exception", "3 KB event id", "3 KB step", "check constraint"],
)
async def test_the_database_refusing_one_row_rejects_only_that_row(
    database_url: str, aconn: Conn, setup: str, change: dict[str, str], state: str, message: str
) -> None:
    if setup:
        await aconn.execute(setup)
    batch = events(40)
    batch[17] = batch[17].model_copy(update=change)
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many(batch)
    assert result.inserted == 39 and result.outcomes[17] == "rejected"
    [rejection] = result.rejected
    assert rejection.position == 17 and rejection.line == 17
    assert rejection.reason.startswith(f"the database refused it ({state}): ")
    assert message in rejection.reason
    assert await count(aconn) == 39
    cur = await aconn.execute("SELECT raw, source, position, reason FROM noetl.event_rejected")
    [(raw, source, position, reason)] = await cur.fetchall()
    assert (json.loads(raw)["event_id"], source, position) == (batch[17].event_id, "api", 17)
    assert reason == rejection.reason


async def test_a_refused_raw_envelope_keeps_its_input_source_and_position(
    database_url: str, aconn: Conn
) -> None:
    """The rejection of a row the database refused is that of the input as given: its bytes,
    its file and line, like a rejection by validation (and so kept once when ingested again)."""
    line = event(event_id=random_text(3000)).model_dump_json().encode()
    items = [RawEnvelope(e.model_dump_json(), "f.ndjson", i + 1) for i, e in enumerate(events(6))]
    items[4] = RawEnvelope(line, "f.ndjson", 5)
    async with PostgresEventSink(database_url) as sink:
        first = await sink.emit_many(items)
        again = await sink.emit_many(items)
    assert [(r.position, r.line) for r in first.rejected] == [(4, 5)]
    assert again.outcomes == ["duplicate"] * 4 + ["rejected", "duplicate"]
    cur = await aconn.execute(
        "SELECT raw, raw_bytes, raw_length, raw_sha256, source, position FROM noetl.event_rejected"
    )
    assert await cur.fetchall() == [
        (line.decode(), None, len(line), hashlib.sha256(line).digest(), "f.ndjson", 5)
    ]


async def test_a_batch_mixing_invalid_and_refused_items_keeps_each_rejection_once(
    database_url: str, aconn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items validation rejects and a row the server refuses, in one batch, through the bisect
    and a lost COMMIT: each rejection is stored exactly once."""
    batch: list[Any] = list(events(30))
    batch[3] = RawEnvelope(b"not json", "mixed", 4)
    batch[11] = batch[11].model_copy(update={"step": random_text(3000)})
    batch[20] = {"event_type": "no execution id"}
    batch[27] = RawEnvelope(b'{"execution_id": "e", "event_type": "\\u0000"}', "mixed", 28)
    async with PostgresEventSink(database_url) as sink:
        lose = lose_next_commit(monkeypatch)
        result = await sink.emit_many(batch)
    assert lose == [0]
    assert [r.position for r in result.rejected] == [3, 11, 20, 27]
    assert result.inserted == 26
    cur = await aconn.execute(
        "SELECT position, count(*) FROM noetl.event_rejected GROUP BY 1 ORDER BY 1"
    )
    assert await cur.fetchall() == [(4, 1), (11, 1), (20, 1), (28, 1)]
    assert await count(aconn) == 26


async def test_concurrent_emitters_are_group_committed(database_url: str, aconn: Conn) -> None:
    batch = events(500, per_execution=5)
    async with PostgresEventSink(database_url) as sink:
        outcomes = await asyncio.gather(*(sink.emit(e) for e in batch))
    assert set(outcomes) == {"inserted"}
    assert await count(aconn) == 500
    transactions = await count(aconn, "SELECT count(DISTINCT txid) FROM noetl.event")
    assert transactions < 100  # many callers share each transaction


async def test_concurrent_writers_store_overlapping_batches_once(
    database_url: str, aconn: Conn
) -> None:
    batch = events(3000, per_execution=30)
    sinks = [PostgresEventSink(database_url, batch_size=500) for _ in range(3)]
    for s in sinks:
        await s.open()
    try:
        results = await asyncio.gather(
            sinks[0].emit_many(batch),
            sinks[1].emit_many(reversed(batch)),
            sinks[2].emit_many(batch[1000:2000] + batch[:1000]),
        )
    finally:
        for s in sinks:
            await s.close()
    assert await count(aconn) == 3000
    assert sum(r.inserted for r in results) == 3000
    assert sum(r.duplicates for r in results) == 3000 + 2000 - 0
    assert all(r.conflicts == 0 for r in results)


async def test_retries_across_dropped_connections(database_url: str, aconn: Conn) -> None:
    batch = events(20_000)

    async def kill_connections() -> int:
        killed = 0
        for _ in range(40):
            cur = await aconn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'sink-under-test' AND pid <> pg_backend_pid()"
            )
            row = await cur.fetchone()
            killed += int(row[0]) if row else 0
            await asyncio.sleep(0.02)
        return killed

    async with PostgresEventSink(
        database_url, batch_size=500, application_name="sink-under-test"
    ) as sink:
        result, killed = await asyncio.gather(sink.emit_many(batch), kill_connections())
    assert killed > 0
    assert result.inserted + result.duplicates == 20_000
    assert result.inserted == 20_000  # a batch whose COMMIT got through is still counted as ours
    assert await count(aconn) == 20_000


async def test_missing_schema_says_what_to_do(empty_database_url: str) -> None:
    with pytest.raises(SchemaMissing, match="projector db upgrade"):
        async with PostgresEventSink(empty_database_url):
            pass


async def test_unreachable_database_is_reported() -> None:
    with pytest.raises(DatabaseUnavailable):
        async with PostgresEventSink("postgresql://postgres@127.0.0.1:1/none", connect_timeout=1):
            pass


async def test_emit_blocks_when_the_queue_is_full(database_url: str, aconn: Conn) -> None:
    # Hold the lock every writer of this execution needs, so the sink cannot commit: callers
    # beyond max_pending must wait instead of growing the queue.
    import zlib

    from projector.channels import SINK_LOCK_CLASS
    from projector.pgsink import LOCK_BUCKETS

    bucket = zlib.crc32(b"exec-0") % LOCK_BUCKETS
    blocker = await psycopg.AsyncConnection.connect(database_url)
    await blocker.execute("SELECT pg_advisory_xact_lock(%s, %s)", (SINK_LOCK_CLASS, bucket))
    batch = [event("exec-0", str(i)) for i in range(50)]
    async with PostgresEventSink(database_url, max_pending=10, batch_size=5, flushers=1) as sink:
        tasks = [asyncio.create_task(sink.emit(e)) for e in batch]
        await asyncio.sleep(0.3)
        assert sink._group is not None and sink._group.queued <= 10
        assert not any(t.done() for t in tasks)
        await blocker.rollback()  # release: everything drains
        assert set(await asyncio.gather(*tasks)) == {"inserted"}
    await blocker.close()
    assert await count(aconn) == 50


async def test_stdout_sink_lines_read_back(database_url: str, aconn: Conn) -> None:
    import io

    from projector.ingest import ingest
    from projector.sinks import EventEmitter, StdoutEventSink

    out = io.StringIO()
    emitter = EventEmitter(7288213371283718145, StdoutEventSink(out))
    await emitter.emit("step.enter", "start", "RUNNING", {"attempt": 1})
    await emitter.emit("step.exit", "start", "COMPLETED")
    lines = out.getvalue().splitlines()
    # Derived ids are not written (issue 10): ingest derives the same ones from the same bytes.
    assert len(lines) == 2 and all("event_id" not in json.loads(line) for line in lines)
    async with PostgresEventSink(database_url) as sink:
        first = await ingest(sink, io.BytesIO(out.getvalue().encode()), "stdout")
        second = await ingest(sink, io.BytesIO(out.getvalue().encode()), "stdout")
    assert first.counts()["inserted"] == 2 and second.counts()["duplicates"] == 2
    cur = await aconn.execute("SELECT DISTINCT execution_id FROM noetl.event")
    assert await cur.fetchall() == [("7288213371283718145",)]


async def test_large_batches_find_conflicts_in_other_months(database_url: str, aconn: Conn) -> None:
    """Big batches probe only their own months, plus everywhere for executions stored elsewhere."""
    from projector.pglookup import WINDOW_MIN_KEYS

    old = event("long-run", "k-1", at=-40 * 86400)  # a month or more before the batch
    batch = events(WINDOW_MIN_KEYS + 700, execution_prefix="big")
    reused = event("long-run", "k-1", at=5.0, status="FAILED")  # same id, this month
    redelivered = batch[10]
    async with PostgresEventSink(database_url, lanes=1) as sink:
        assert await sink.emit(old) == "inserted"
        await sink.emit_many(batch[:20])
        result = await sink.emit_many([*batch[20:], reused, redelivered])
    assert result.conflict_ids == [("long-run", "k-1")]
    assert result.outcomes[-2:] == ["conflict", "duplicate"]
    assert result.inserted == len(batch) - 20
    assert await count(aconn) == len(batch) + 1


async def test_stored_rows_carry_the_content_hash(database_url: str, aconn: Conn) -> None:
    from projector.pgsink import content_hash

    batch = events(3)
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many(batch)
    cur = await aconn.execute("SELECT event_id, content_hash FROM noetl.event ORDER BY event_id")
    stored = await cur.fetchall()
    assert stored == [(e.event_id, content_hash(e)) for e in batch]
    assert len({h for _, h in stored}) == 3 and all(len(h) == 16 for _, h in stored)
    # The hash covers every content field, and nothing else.
    e = batch[0]
    assert content_hash(e.model_copy(update={"worker_id": "w9"})) != content_hash(e)
    assert content_hash(e.model_copy(update={"context": {"n": "1"}})) != content_hash(e)
    assert content_hash(e.model_copy(update={"meta": {}})) != content_hash(e)
    assert content_hash(e.model_copy(update={"event_id": "other"})) == content_hash(e)


@pytest.mark.parametrize("size", [3, 1200], ids=["small batch", "windowed batch"])
async def test_duplicates_without_an_equal_hash_are_compared_in_full(
    database_url: str, aconn: Conn, size: int
) -> None:
    """Rows written by another tool (no hash) or JSON spelled in another key order (another hash)
    are still duplicates when their content is equal, and conflicts when it is not."""
    batch = [
        e.model_copy(update={"context": {"a": 1, "b": [1, 2], "n": e.event_id}})
        for e in events(size, execution_prefix="other")
    ]
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many(batch)
    # Half the rows lose their hash, as if another writer had stored them.
    await aconn.execute("UPDATE noetl.event SET content_hash = NULL WHERE event_id::int % 2 = 0")
    reordered = [e.model_copy(update={"context": dict(reversed(e.context.items()))}) for e in batch]
    changed = batch[1].model_copy(update={"context": {"a": 2}})
    unhashed_changed = batch[2].model_copy(update={"status": "FAILED"})
    async with PostgresEventSink(database_url) as sink:
        again = await sink.emit_many(batch)
        shuffled = await sink.emit_many(reordered)
        mixed = await sink.emit_many([changed, unhashed_changed, batch[0]])
    assert again.duplicates == size and shuffled.duplicates == size
    assert mixed.outcomes == ["conflict", "conflict", "duplicate"]
    assert await count(aconn) == size


async def test_emit_many_takes_any_iterable_and_overlaps_windows(
    database_url: str, aconn: Conn
) -> None:
    """A generator longer than several windows: every item is counted once, in order."""
    batch = events(2500, execution_prefix="gen")
    async with PostgresEventSink(database_url, batch_size=400) as sink:
        first = await sink.emit_many(e for e in batch)
        again = await sink.emit_many(iter([*batch[:1000], RawEnvelope(b"{", "test", 7)]))
    assert first.inserted == 2500 and first.outcomes == ["inserted"] * 2500
    assert again.outcomes == ["duplicate"] * 1000 + ["rejected"]
    assert again.rejected[0].position == 1000 and again.rejected[0].line == 7
    assert await count(aconn) == 2500


@pytest.mark.parametrize("id_format", ["k-{:05d}", "{:05d}"], ids=["text ids", "decimal ids"])
@pytest.mark.parametrize("size", [10, 700], ids=["small batch", "windowed batch"])
async def test_dense_id_ranges_fall_back_to_probing_each_key(
    database_url: str, aconn: Conn, size: int, id_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids that interleave with stored ones (random ids) make an execution's id range denser than
    the range scan reads: its keys are probed one by one, and nothing is missed."""
    probed: list[int] = []
    probe_keys = pglookup.probe_keys

    async def spy(cur: Any, keys: list[tuple[str, str]], times: list[Any]) -> Any:
        probed.append(len(keys))
        return await probe_keys(cur, keys, times)

    monkeypatch.setattr(pglookup, "probe_keys", spy)
    stored = [
        event("dense", id_format.format(i), at=i / 1000) for i in range(8 * size) if i % 4 != 1
    ]
    new = [event("dense", id_format.format(i), at=i / 1000) for i in range(1, 4 * size, 4)]
    reused = stored[len(stored) // 2].model_copy(update={"status": "FAILED"})
    redelivered = stored[3]
    # Another month: probed everywhere. Its id sorts last, so the range covers every stored row.
    old = event("dense", id_format.format(99999), at=-40 * 86400)
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many([*stored, old])
        result = await sink.emit_many([*new, reused, redelivered, old])
    assert result.outcomes == ["inserted"] * len(new) + ["conflict", "duplicate", "duplicate"]
    assert await count(aconn) == len(stored) + len(new) + 1
    assert probed == [len(new) + 3]  # the second batch's range was too dense to read whole


def test_decimal_bounds_only_for_ids_every_collation_orders_alike() -> None:
    from projector.pglookup import decimal_bounds

    assert decimal_bounds([("a", "0042"), ("a", "0007"), ("b", "9"), ("a", "0100")]) == {
        "a": ["0007", "0100", 3],
        "b": ["9", "9", 1],
    }
    assert decimal_bounds([("a", "42"), ("a", "7")]) is None  # lengths differ: "42" < "7"
    assert decimal_bounds([("a", "42"), ("a", "4x")]) is None
    assert decimal_bounds([("a", "\u0661\u0662")]) is None  # Arabic-Indic digits


async def test_a_lost_commit_counts_once_and_keeps_rejects_once(
    database_url: str, aconn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The COMMIT goes through but the connection dies before the answer: the retry recognises
    its own rows (inserted, not duplicates) and does not store the rejected line again."""
    stored = event(event_id="100")
    async with PostgresEventSink(database_url) as sink:
        await sink.emit(stored)
        lose = lose_next_commit(monkeypatch)
        items = [event(event_id="1"), event(event_id="1"), stored, RawEnvelope("not json", "t", 9)]
        result = await sink.emit_many(items)
    assert lose == [0]  # the COMMIT was lost once
    assert result.outcomes == ["inserted", "duplicate", "duplicate", "rejected"]
    assert await count(aconn) == 2
    assert await count(aconn, "SELECT count(*) FROM noetl.event_rejected") == 1


async def test_a_failing_iterable_still_stores_the_window_being_written(
    database_url: str, aconn: Conn
) -> None:
    def produce() -> Any:
        yield from events(10, execution_prefix="it")
        raise RuntimeError("the producer broke")

    async with PostgresEventSink(database_url, batch_size=5) as sink:
        with pytest.raises(RuntimeError, match="producer broke"):
            await sink.emit_many(produce())
    assert await count(aconn) == 10  # both windows handed over before the failure


async def test_an_envelope_built_without_validation_is_rejected_if_unstorable(
    database_url: str, aconn: Conn
) -> None:
    good = event(event_id="1")
    bad = good.model_copy(update={"event_id": "2", "context": {"a": float("inf"), "b": 2**80}})
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many([bad, good])
    assert result.outcomes == ["rejected", "inserted"]
    assert result.rejected[0].reason.startswith("not storable")
    assert await count(aconn) == 1


async def test_emit_rejects_an_unstorable_envelope_and_keeps_flushing(
    database_url: str, aconn: Conn
) -> None:
    """It used to escape the flusher: the caller waited forever, and so did every later caller
    once both flushers had died."""
    from projector import InvalidEnvelope

    good = event(event_id="1")
    bad = good.model_copy(update={"event_id": "2", "context": {"a": float("inf"), "b": 2**80}})
    async with PostgresEventSink(database_url, flushers=1) as sink:
        for _ in range(2):
            with pytest.raises(InvalidEnvelope, match="not storable"):
                await asyncio.wait_for(sink.emit(bad), 30)
        assert await asyncio.wait_for(sink.emit(good), 30) == "inserted"
    assert await count(aconn) == 1
    cur = await aconn.execute("SELECT source, reason FROM noetl.event_rejected")
    rows = await cur.fetchall()
    assert len(rows) == 2 and all(r[0] == "emit" and "not storable" in r[1] for r in rows)


async def test_duplicates_in_one_batch_follow_jsonb_equality(database_url: str) -> None:
    """Within a batch as across batches: 1 and 1.0 are equal, true and 1 are not."""
    a = event(event_id="1", context={"ok": True, "n": 1})
    async with PostgresEventSink(database_url) as sink:
        same_batch = await sink.emit_many(
            [
                a,
                a.model_copy(update={"context": {"n": 1.0, "ok": True}}),
                a.model_copy(update={"context": {"ok": 1, "n": 1}}),
            ]
        )
        next_batch = await sink.emit_many(
            [
                a.model_copy(update={"context": {"n": 1.0, "ok": True}}),
                a.model_copy(update={"context": {"ok": 1, "n": 1}}),
            ]
        )
    assert same_batch.outcomes == ["inserted", "duplicate", "conflict"]
    assert next_batch.outcomes == ["duplicate", "conflict"]


def test_text_columns_bind_joined_unless_a_value_holds_a_marker() -> None:
    from projector.pglookup import _COMPARE, _bind

    assert _bind(_COMPARE, [["a", "b"], ["c", None]]) == (_COMPARE.joined, ("a\x1fb", "c\x1f\x1e"))
    for unsafe in (["a\x1fb", "c"], ["a\x1e", None], [""]):
        text, params = _bind(_COMPARE, [unsafe, ["x"] * len(unsafe)])
        assert text == _COMPARE.array and params == (unsafe, ["x"] * len(unsafe))


async def test_both_forms_of_every_lookup_find_the_same_rows(database_url: str) -> None:
    """Each `_joined` statement and its `_array` twin return the same rows for the same values."""
    from projector import batch
    from projector.pglookup import (
        _COMPARE,
        _LOOKUP,
        _LOOKUP_WINDOW,
        _RANGES,
        _RANGES_GIVEN,
        _STORED_EXECUTIONS,
        NULL_MARK,
        SEPARATOR,
        month_window,
    )

    stored = events(30, execution_prefix="forms", per_execution=10)
    stored[3] = stored[3].model_copy(update={"worker_id": "w", "meta": {"m": 1}})
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many(stored)
    probe = [*stored[::3], event("forms-9", "new")]
    pending = [batch.encode(i, e) for i, e in enumerate(probe)]
    pending[1] = batch.encode(1, probe[1].model_copy(update={"status": "FAILED"}))
    keys = [p.key for p in pending]
    executions = sorted({k[0] for k in keys})
    lo, hi = month_window([e.created_at for e in probe])
    compare = list(zip(*map(batch.compare_values, pending), strict=True))
    cases: list[tuple[Any, list[Any], tuple[Any, ...], tuple[Any, ...]]] = [
        (_RANGES, [[k[0] for k in keys], [k[1] for k in keys]], (), ()),
        (_RANGES_GIVEN, [executions, ["0"] * 4, ["9"] * 4], (), ([99] * 4,)),
        (_LOOKUP, [[k[0] for k in keys], [k[1] for k in keys]], (), ()),
        (_LOOKUP_WINDOW, [[k[0] for k in keys], [k[1] for k in keys]], (), (lo, hi)),
        (_STORED_EXECUTIONS, [executions], (lo, hi, lo, hi), ()),
        (_COMPARE, compare, (), ()),
    ]
    conn = await psycopg.AsyncConnection.connect(database_url)
    try:
        for forms, columns, before, after in cases:
            joined = tuple(
                SEPARATOR.join(NULL_MARK if v is None else v for v in col) for col in columns
            )
            found = []
            for text, params in ((forms.joined, joined), (forms.array, tuple(map(list, columns)))):
                cur = await conn.execute(text, (*before, *params, *after))
                found.append(sorted(await cur.fetchall()))
            assert found[0] == found[1] and found[0], forms.joined
    finally:
        await conn.close()


async def test_ids_holding_the_separators_take_the_array_forms(
    database_url: str, aconn: Conn
) -> None:
    batch = [event("x\x1fy", f"k\x1e{i}", at=i) for i in range(5)]
    async with PostgresEventSink(database_url) as sink:
        first = await sink.emit_many(batch)
        again = await sink.emit_many(batch)
        await aconn.execute("UPDATE noetl.event SET content_hash = NULL")
        compared = await sink.emit_many(
            [batch[0], batch[1].model_copy(update={"status": "FAILED"})]
        )
    assert first.inserted == 5 and again.duplicates == 5
    assert compared.outcomes == ["duplicate", "conflict"]
    assert await count(aconn) == 5


# -- one bad item costs only itself: group commit ------------------------------------------------


async def test_one_refused_emit_fails_only_its_own_caller(database_url: str, aconn: Conn) -> None:
    """400 concurrent callers, one of whose events the database refuses (a 3 KB step): that
    caller gets InvalidEnvelope, the 399 others their outcome."""
    from projector import InvalidEnvelope

    batch = events(400, per_execution=4)
    batch[123] = batch[123].model_copy(update={"step": random_text(3000)})
    async with PostgresEventSink(database_url) as sink:
        outcomes = await asyncio.gather(*(sink.emit(e) for e in batch), return_exceptions=True)
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, BaseException)]
    assert failed == [123] and isinstance(outcomes[123], InvalidEnvelope)
    assert "exceeds btree version 4 maximum 2704" in str(outcomes[123])
    assert await count(aconn) == 399
    cur = await aconn.execute("SELECT source, position FROM noetl.event_rejected")
    assert await cur.fetchall() == [("emit", None)]


async def test_each_emit_caller_learns_its_own_outcome_when_a_transaction_fails(
    database_url: str, aconn: Conn
) -> None:
    """A flush is written as several transactions; one fails for a reason that is not the row's
    (here a trigger raising an error of no class the sink bisects): its callers get the error,
    every caller whose event another transaction committed succeeds."""
    await aconn.execute(
        """
        CREATE FUNCTION broken() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.execution_id = 'exec-3' THEN RAISE EXCEPTION 'broken trigger'; END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER broken BEFORE INSERT ON noetl.event FOR EACH ROW EXECUTE FUNCTION broken();
        """
    )
    batch = events(400, per_execution=10)
    async with PostgresEventSink(database_url, flushers=1, flush_lanes=2) as sink:
        outcomes = await asyncio.gather(*(sink.emit(e) for e in batch), return_exceptions=True)
    cur = await aconn.execute("SELECT event_id FROM noetl.event")
    stored = {int(r[0]) for r in await cur.fetchall()}
    succeeded = {i for i, o in enumerate(outcomes) if o == "inserted"}
    assert succeeded == stored  # success exactly for the stored events
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert failed and all("broken trigger" in str(e) for e in failed)
    assert succeeded  # the other lane's transaction committed, and its callers were told


# -- bounded lock waits --------------------------------------------------------------------------


async def hold_bucket(database_url: str, bucket: int, name: str) -> psycopg.AsyncConnection[Any]:
    """A session (application_name `name`) holding the sink's advisory lock on `bucket` in an
    open transaction."""
    from projector.channels import SINK_LOCK_CLASS

    blocker = await psycopg.AsyncConnection.connect(database_url, application_name=name)
    await blocker.execute("SELECT pg_advisory_xact_lock(%s, %s)", (SINK_LOCK_CLASS, bucket))
    return blocker


async def test_a_writer_stalled_by_a_lock_names_the_session_holding_it(
    database_url: str, aconn: Conn
) -> None:
    from projector.errors import LockTimeout

    batch = events(20, execution_prefix="stall", per_execution=20)
    blocker = await hold_bucket(database_url, pglookup.lock_bucket("stall-0"), "the-blocker")
    pid = blocker.info.backend_pid
    try:
        async with PostgresEventSink(database_url, lock_timeout=0.2, retry_for=1) as sink:
            with pytest.raises(LockTimeout) as info:
                await sink.emit_many(batch)
            with pytest.raises(DatabaseUnavailable):  # what callers that retry later catch
                await sink.emit(batch[0])
            await blocker.rollback()
            assert (await sink.emit_many(batch)).inserted == 20  # released: stored
    finally:
        await blocker.close()
    message = str(info.value)
    assert f"pid {pid} (application_name 'the-blocker'" in message
    assert f"advisory lock on bucket {pglookup.lock_bucket('stall-0')}" in message
    assert "in a transaction open for" in message and "lock_timeout (0.2 s)" in message
    assert len(info.value.blockers) == 1 and info.value.setting == "lock_timeout"
    assert await count(aconn) == 20


async def test_the_advisory_locks_are_requested_in_sorted_order(
    database_url: str, aconn: Conn
) -> None:
    """Asserted from pg_locks, not from the absence of deadlocks: while another session holds one
    of the batch's buckets, the sink holds exactly the buckets below it and waits for it."""
    from projector.channels import SINK_LOCK_CLASS

    batch = events(200, execution_prefix="order", per_execution=10)  # 20 executions
    buckets = sorted({pglookup.lock_bucket(e.execution_id) for e in batch})
    assert len(buckets) >= 10
    held = buckets[len(buckets) // 2]
    blocker = await hold_bucket(database_url, held, "order-blocker")
    try:
        async with PostgresEventSink(
            database_url, lock_timeout=60, application_name="ordered"
        ) as sink:
            writing = asyncio.create_task(sink.emit_many(list(reversed(batch))))

            async def locks() -> list[tuple[int, bool]]:
                cur = await aconn.execute(
                    "SELECT l.objid::int, l.granted FROM pg_locks l JOIN pg_stat_activity a "
                    "USING (pid) WHERE a.application_name = 'ordered' "
                    "AND l.locktype = 'advisory' AND l.classid::int = %s ORDER BY 1",
                    (SINK_LOCK_CLASS,),
                )
                return [(int(r[0]), bool(r[1])) for r in await cur.fetchall()]

            for _ in range(600):
                seen = await locks()
                if any(not granted for _, granted in seen):
                    break
                await asyncio.sleep(0.05)
            assert seen == [(b, True) for b in buckets if b < held] + [(held, False)]
            await blocker.rollback()
            assert (await writing).inserted == 200
    finally:
        await blocker.close()


# -- hostile dates and database-level timeouts ---------------------------------------------------


def test_the_month_window_of_december_9999_has_no_end() -> None:
    from datetime import UTC, datetime

    from projector.pglookup import month_window

    last = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert month_window([datetime(9999, 11, 3, tzinfo=UTC), last]) == (
        datetime(9999, 11, 1, tzinfo=UTC),
        None,
    )
    assert month_window([datetime(9998, 12, 3, tzinfo=UTC)])[1] == datetime(9999, 1, 1, tzinfo=UTC)


async def test_a_december_9999_event_in_a_large_batch_is_stored(
    database_url: str, aconn: Conn
) -> None:
    """A batch large and dense enough to be probed key by key in its months: with an event of
    December 9999 the months reach past what a datetime holds, and every key is probed."""
    from datetime import UTC, datetime

    from projector.pglookup import WINDOW_MIN_KEYS

    n = 2 * WINDOW_MIN_KEYS
    stored = [event("dense", f"k-{i:05d}", at=i / 1000) for i in range(0, 2 * n, 2)]
    late = event("dense", "k-99999", at=0).model_copy(
        update={"created_at": datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)}
    )
    new = [event("dense", f"k-{i:05d}", at=i / 1000) for i in range(1, 2 * n, 2)]
    async with PostgresEventSink(database_url) as sink:
        await sink.emit_many([*stored, late])
        result = await sink.emit_many([*new, late, stored[7]])
    assert result.outcomes == ["inserted"] * len(new) + ["duplicate", "duplicate"]
    assert await count(aconn) == len(stored) + len(new) + 1


async def test_database_level_timeouts_do_not_reach_the_sink(
    database_url: str, aconn: Conn
) -> None:
    """A statement_timeout and lock_timeout set for the database (for interactive users) would
    cancel the sink's statements; its sessions set their own."""
    dbname = aconn.info.dbname
    await aconn.execute(f'ALTER DATABASE "{dbname}" SET statement_timeout = 1')
    await aconn.execute(f'ALTER DATABASE "{dbname}" SET lock_timeout = 1')
    async with PostgresEventSink(database_url, batch_size=5000, lock_timeout=7) as sink:
        result = await sink.emit_many(events(20_000))
        async with sink._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('statement_timeout'), current_setting('lock_timeout')"
            )
            assert await cur.fetchone() == ("0", "7s")
    assert result.inserted == 20_000


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"execution_id": "x\ud800"}, "the database cannot store it: 'utf-8' codec can't encode"),
        ({"step": "a\x00b"}, "the database refused it (22021): invalid byte sequence"),
        ({"event_id": "k\x00"}, "PostgreSQL text fields cannot contain NUL"),
    ],
    ids=["lone surrogate in an id", "NUL in a text column", "NUL in a looked-up id"],
)
async def test_text_an_unvalidated_envelope_holds_is_refused_alone(
    database_url: str, aconn: Conn, change: dict[str, str], reason: str
) -> None:
    """Envelopes built without validation (model_copy) may hold text PostgreSQL cannot take; it is
    refused in the client or the server, and only that event is rejected."""
    batch = events(10)
    batch[6] = batch[6].model_copy(update=change)
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many(batch)
    assert result.outcomes == ["inserted"] * 6 + ["rejected"] + ["inserted"] * 3
    assert reason in result.rejected[0].reason
    assert await count(aconn) == 9
    assert await count(aconn, "SELECT count(*) FROM noetl.event_rejected") == 1
