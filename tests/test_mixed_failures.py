"""A batch mixing items validation rejects with rows the server refuses: each rejection once.

The refused rows sit in both halves of the batch, so the bisect recurses on both sides, and the
invalid items are at the ends and in the middle, so that a rejection handed to more than one
half, or handled both before and after the bisect, would be stored twice. The same batch sent
again stores nothing new: the valid rows are duplicates and the rejections, kept by their unique
key (source and position), are not stored a second time.

That unique key is itself a safety net: a rejection handed to two halves would be absorbed by it
(and by the outcomes, kept per index). So a trigger counts every row offered to
``noetl.event_rejected`` by a committed transaction, before the key is checked: each rejection
must be offered once in the first batch.
"""

from __future__ import annotations

import random
import string
from typing import Any

import psycopg

from projector.pgsink import PostgresEventSink, RawEnvelope
from tests.factories import events

Conn = psycopg.AsyncConnection[Any]

OFFERED = """
CREATE TABLE public.rejects_offered (position bigint);
CREATE FUNCTION public.count_offered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO public.rejects_offered VALUES (NEW.position);
  RETURN NEW;
END $$;
CREATE TRIGGER count_offered BEFORE INSERT ON noetl.event_rejected
  FOR EACH ROW EXECUTE FUNCTION public.count_offered();
"""
INVALID = {0: "mapping", 13: "nul", 39: "raw"}
REFUSED = (7, 30)  # one in each half of 40


def batch() -> list[Any]:
    items: list[Any] = list(events(40, execution_prefix="mixed", per_execution=8))
    long_step = "".join(random.Random(1).choices(string.ascii_letters, k=3000))
    for i in REFUSED:  # an index entry over 2,704 bytes: only the server can refuse it
        items[i] = items[i].model_copy(update={"step": long_step})
    items[0] = {"event_type": "no execution id", "created_at": "2026-01-01T00:00:00Z"}
    items[13] = {**items[13].model_dump(mode="json"), "step": "a\x00b"}
    items[39] = RawEnvelope(b'{"execution_id": "mixed", "event_type": 7', "mixed.ndjson", 40)
    return items


async def test_each_rejection_is_stored_once_through_the_bisect(
    database_url: str, aconn: Conn
) -> None:
    await aconn.execute(OFFERED)
    items = batch()
    async with PostgresEventSink(database_url) as sink:
        first = await sink.emit_many(items)
        cur = await aconn.execute(
            "SELECT position, count(*) FROM public.rejects_offered GROUP BY 1 ORDER BY 1"
        )
        offered = await cur.fetchall()
        again = await sink.emit_many(items)
    rejected = sorted([*INVALID, *REFUSED])
    stored = [p if p != 39 else 40 for p in rejected]  # the raw envelope's is its line
    assert offered == [(p, 1) for p in stored]  # each offered once: the key was not needed
    assert [r.position for r in first.rejected] == rejected
    assert first.inserted == 40 - len(rejected)
    for r in first.rejected:
        refused = r.position in REFUSED
        assert r.reason.startswith("the database refused it (54000)") == refused, r.reason
    assert "step contains a NUL" in first.rejected[2].reason
    assert again.inserted == 0
    assert again.outcomes == [
        "rejected" if i in rejected else "duplicate" for i in range(len(items))
    ]
    cur = await aconn.execute(
        "SELECT position, count(*) FROM noetl.event_rejected GROUP BY 1 ORDER BY 1"
    )
    assert await cur.fetchall() == [(p, 1) for p in stored]
    cur = await aconn.execute("SELECT count(*) FROM noetl.event")
    assert await cur.fetchone() == (40 - len(rejected),)
