"""The hostile-input corpus (`tests/hostile.py`) through `emit_many`, `projector ingest` and
`projector consume`: each bad item rejected with its reason and position, every good neighbour
stored, each rejection kept once, nothing raised."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import psycopg
import pytest
from psycopg import sql

from projector import PostgresEventSink, RawEnvelope
from projector.batch import REJECTED_PREFIX_BYTES
from projector.bridge import Bridge, BridgeConfig
from tests import hostile
from tests.natsutil import Names

Conn = psycopg.AsyncConnection[Any]

ITEMS = hostile.interleaved()


def rejected_here(item: hostile.Item, *, blank_skipped: bool) -> bool:
    """Whether `item` must be rejected on this path (ingest skips blank lines)."""
    if item.case is None or item.case.expect == "stored":
        return False
    return not (blank_skipped and item.case.expect == "blank")


def check_reasons(reasons: dict[int, str], *, blank_skipped: bool) -> None:
    """`reasons` (by position in ITEMS) hold exactly the items rejected here, each for its case's
    reason."""
    expected = {
        i for i, item in enumerate(ITEMS) if rejected_here(item, blank_skipped=blank_skipped)
    }
    assert set(reasons) == expected
    for i, reason in reasons.items():
        case = ITEMS[i].case
        assert case is not None
        assert any(r in reason for r in case.reason), (case.name, reason)
        assert not reason.startswith("the database") or "54000" in case.reason, (case.name, reason)


async def check_stored(conn: Conn) -> None:
    """Every good neighbour is stored, and every case that must be stored, as it must be."""
    cur = await conn.execute("SELECT count(*) FROM noetl.event WHERE execution_id = 'good'")
    assert await cur.fetchone() == (sum(1 for item in ITEMS if item.case is None),)
    stored = [item.case for item in ITEMS if item.case is not None and item.case.expect == "stored"]
    for case in stored:
        assert case.check is not None
        execution_id, event_id, column, value = case.check
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM noetl.event WHERE execution_id = %s AND event_id = %s").format(
                sql.SQL(column)  # type: ignore[arg-type]  # the corpus's own expressions
            ),
            (execution_id, event_id),
        )
        assert await cur.fetchall() == [(value,)], case.name
    cur = await conn.execute("SELECT count(*) FROM noetl.event")
    assert await cur.fetchone() == (len(stored) + sum(1 for item in ITEMS if item.case is None),)


async def check_rejected_rows(
    conn: Conn, source: Any, positions: dict[int, int], raw_of: Any = lambda raw: raw
) -> None:
    """noetl.event_rejected holds one row per rejected item: at its position, with the length and
    SHA-256 of its input (`raw_of` the bytes the path hands the sink) and at most a prefix of it."""
    cur = await conn.execute(
        "SELECT position, source, raw_length, raw_sha256, octet_length(raw), raw_bytes "
        "FROM noetl.event_rejected ORDER BY position"
    )
    rows = await cur.fetchall()
    assert [r[0] for r in rows] == sorted(positions.values())
    by_position = {r[0]: r for r in rows}
    for i, position in positions.items():
        data = raw_of(ITEMS[i].raw)
        _, row_source, length, digest, text_bytes, raw_bytes = by_position[position]
        assert row_source == (source(i) if callable(source) else source)
        assert (length, digest) == (len(data), hashlib.sha256(data).digest())
        assert (
            text_bytes <= 4 * REJECTED_PREFIX_BYTES
            and len(raw_bytes or b"") <= REJECTED_PREFIX_BYTES
        )


async def test_the_corpus_through_emit_many(database_url: str, aconn: Conn) -> None:
    items = [RawEnvelope(item.raw, "hostile", i + 1) for i, item in enumerate(ITEMS)]
    async with PostgresEventSink(database_url, batch_size=25) as sink:
        result = await sink.emit_many(items)
        again = await sink.emit_many(items)  # the same input again: nothing new to keep
    reasons = {r.position: r.reason for r in result.rejected}
    check_reasons(reasons, blank_skipped=False)
    assert all(r.line == r.position + 1 for r in result.rejected)
    assert [o == "rejected" for o in again.outcomes] == [o == "rejected" for o in result.outcomes]
    await check_stored(aconn)
    await check_rejected_rows(aconn, "hostile", {i: i + 1 for i in reasons})


async def test_python_input_no_text_can_hold_is_rejected_and_kept(
    database_url: str, aconn: Conn
) -> None:
    """Raw input given as str, and mappings, may hold lone surrogates themselves (not escapes):
    they are rejected naming the field, and their rejection rows are storable, the exact bytes
    in raw_bytes."""
    envelope = json.loads(hostile.good(1))
    items: list[Any] = [
        RawEnvelope(json.dumps({**envelope, "step": "\ud800"}, ensure_ascii=False), "py", 1),
        {**envelope, "event_id": "m", "context": {"\udcff": "x"}},
        RawEnvelope(hostile.good(2), "py", 3),
    ]
    async with PostgresEventSink(database_url) as sink:
        result = await sink.emit_many(items)
    assert result.outcomes == ["rejected", "rejected", "inserted"]
    assert [r.reason for r in result.rejected] == [
        "step contains a lone surrogate, which is not valid UTF-8",
        "context key contains a lone surrogate, which is not valid UTF-8",
    ]
    cur = await aconn.execute(
        "SELECT position, raw, raw_bytes FROM noetl.event_rejected ORDER BY 1"
    )
    (p1, raw1, bytes1), (p2, raw2, bytes2) = await cur.fetchall()
    assert (p1, p2) == (1, 1)  # the envelope's line; the mapping's index in the batch
    assert bytes1 == items[0].raw.encode("utf-8", "surrogatepass") and "\\xed\\xa0\\x80" in raw1
    assert bytes2 is not None and "\\xed\\xb3\\xbf" in raw2


def test_the_corpus_through_projector_ingest(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "hostile.ndjson"
    path.write_bytes(hostile.ndjson())
    command = ["ingest", str(path), "--json"]
    runs = [
        subprocess.run(
            [sys.executable, "-m", "projector", "--database-url", database_url, *command],
            capture_output=True,
            timeout=300,
            check=False,
        )
        for _ in range(2)
    ]
    for done in runs:
        assert done.returncode == 1, done.stderr  # 1: something was rejected, the rest stored
    rejected = {i for i, item in enumerate(ITEMS) if rejected_here(item, blank_skipped=True)}
    counts = json.loads(runs[0].stdout)
    assert counts["rejected"] == len(rejected) and json.loads(runs[1].stdout)["rejected"] == len(
        rejected
    )
    # `PATH:LINE: rejected: reason` on stderr, for the first 20 (raw text: escaping it for a
    # terminal is done elsewhere); all of them in noetl.event_rejected.
    listed = runs[0].stderr.decode("utf-8", "replace").splitlines()
    first = sorted(rejected)[0]
    assert listed[0].startswith(f"{path}:line {first + 1}: rejected: ")

    async def check() -> None:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            cur = await conn.execute("SELECT position, reason FROM noetl.event_rejected")
            check_reasons({int(p) - 1: r for p, r in await cur.fetchall()}, blank_skipped=True)
            await check_stored(conn)
            await check_rejected_rows(conn, str(path), {i: i + 1 for i in rejected}, bytes.strip)

    asyncio.run(check())


@pytest.mark.nats
async def test_the_corpus_through_projector_consume(
    nats_url: str, names: Names, database_url: str, aconn: Conn
) -> None:
    subject = f"{names.prefix}.hostile"
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        for item in ITEMS:
            await js.publish(subject, item.raw)
    finally:
        await nc.close()
    config = BridgeConfig(
        nats_url=nats_url,
        stream=names.stream,
        subject_prefix=names.prefix,
        durable=names.durable,
        batch=32,
        until_empty=True,
        log_interval=0,
    )
    stats = await Bridge(database_url, config).run()  # raises nothing, stops once drained
    rejected = {i for i, item in enumerate(ITEMS) if rejected_here(item, blank_skipped=False)}
    assert stats.rejected == len(rejected) and stats.conflicts == 0
    assert stats.stored == len(ITEMS) - len(rejected)
    assert stats.pending == 0 and stats.ack_pending == 0  # every message acked or termed
    await check_stored(aconn)
    cur = await aconn.execute("SELECT position, reason FROM noetl.event_rejected")
    reasons = {int(p) - 1: r for p, r in await cur.fetchall()}  # stream sequence = index + 1
    check_reasons(reasons, blank_skipped=False)
    await check_rejected_rows(aconn, f"nats:{subject}", {i: i + 1 for i in rejected})
