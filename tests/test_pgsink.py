"""PostgresEventSink against a real PostgreSQL: idempotency, conflicts, rejections, retries."""

from __future__ import annotations

import asyncio
import json
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


async def test_the_database_refusing_one_row_rejects_only_that_row(
    database_url: str, aconn: Conn
) -> None:
    # Stand-in for a value validation does not catch: the server raises a data exception.
    await aconn.execute(
        """
        CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          IF NEW.step = 'poison' THEN
            RAISE EXCEPTION 'poisoned step' USING ERRCODE = '22023';
          END IF;
          RETURN NEW;
        END $$;
        CREATE TRIGGER poison BEFORE INSERT ON noetl.event
          FOR EACH ROW EXECUTE FUNCTION poison();
        """
    )
    batch = events(40)
    batch[17] = batch[17].model_copy(update={"step": "poison"})
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many(batch)
    assert result.inserted == 39
    assert [(r.position, r.reason) for r in result.rejected] == [(17, "poisoned step")]
    assert await count(aconn) == 39
    assert await count(aconn, "SELECT count(*) FROM noetl.event_rejected") == 1


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
    lose = [1]
    real_commit = psycopg.AsyncConnection.commit

    async def commit(self: psycopg.AsyncConnection[Any]) -> None:
        await real_commit(self)
        if lose[0]:
            lose[0] -= 1
            raise psycopg.OperationalError("connection lost after COMMIT")

    stored = event(event_id="100")
    async with PostgresEventSink(database_url) as sink:
        await sink.emit(stored)
        monkeypatch.setattr(psycopg.AsyncConnection, "commit", commit)
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
