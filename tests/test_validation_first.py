"""Validation keeps out every character PostgreSQL cannot store, on its own.

Behind validation two safety nets would keep such a row out anyway: the server refuses it and
the sink bisects the batch down to it. Those nets must not be what catches it, or a validation
that stopped checking a field would pass every test. So: every forbidden character (U+0000, a
lone surrogate), in every text field (under each alias a producer may use) and anywhere in
`context` / `meta` (values, keys, nested, in arrays), sent as a mapping and as raw JSON, is
rejected by validation with a reason that names the field; and a sink given them all in one batch
among valid events stores the valid ones in a single transaction (no bisect, no retry: the
database was never asked about the bad rows) and each rejection exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from projector.batch import Pending, RawEnvelope, RejectedItem, prepare
from projector.pgsink import PostgresEventSink
from tests.factories import event

Conn = psycopg.AsyncConnection[Any]

BASE: dict[str, Any] = {
    "execution_id": "v-1",
    "event_id": "e",
    "event_type": "call.done",
    "step": "s",
    "status": "ok",
    "worker_id": "w",
    "created_at": "2026-01-01T00:00:00Z",
    "context": {"k": "v"},
    "meta": {"m": "n"},
}
#: Text fields, with the name each spelling is reported under.
TEXT_FIELDS = {
    "execution_id": "execution_id",
    "event_id": "event_id",
    "event_type": "event_type",
    "name": "event_type",
    "step": "step",
    "node_name": "step",
    "status": "status",
    "worker_id": "worker_id",
}
FORBIDDEN = {"\x00": "contains a NUL character", "\ud800": "contains a lone surrogate"}


def json_places(c: str) -> Iterator[tuple[str, Any, str]]:
    """(field, value, the path the reason names) for `c` at every place in a JSON field."""
    for field in ("context", "payload", "meta"):
        named = "meta" if field == "meta" else "context"
        yield field, {"k": f"a{c}b"}, f"{named}.k "
        yield field, {f"a{c}": 1}, f"{named} key "
        yield field, {"k": [1, {"deep": [c]}]}, f"{named}.k[1].deep[0] "
        yield field, {"k": {f"x{c}": None}}, f"{named}.k key "
    yield "context", [f"{c}"], "context[0] "
    yield "context", c, "context "


def cases() -> Iterator[tuple[dict[str, Any], str]]:
    """(envelope, what its reason must start with) for every field and forbidden character."""
    for c, problem in FORBIDDEN.items():
        for spelling, name in TEXT_FIELDS.items():
            doc = {k: v for k, v in BASE.items() if TEXT_FIELDS.get(k) != name}
            doc[spelling] = f"x{c}y"
            yield doc, f"{name} {problem}"
        for field, value, path in json_places(c):
            doc = {k: v for k, v in BASE.items() if k != ("meta" if field == "meta" else "context")}
            doc[field] = value
            yield doc, f"{path}{problem}"


CASES = list(cases())


def items(docs: list[dict[str, Any]]) -> list[Any]:
    """Each envelope as a mapping and as raw JSON (``\\u`` escapes: what a producer sends)."""
    out: list[Any] = []
    for n, doc in enumerate(docs):
        out.append(doc)
        raw = json.dumps(doc, ensure_ascii=True).encode("ascii")
        out.append(RawEnvelope(raw, "bad.ndjson", n + 1))
    return out


@pytest.mark.parametrize(("doc", "reason"), CASES, ids=[r for _, r in CASES])
def test_validation_names_the_field(doc: dict[str, Any], reason: str) -> None:
    pending: list[Pending] = []
    rejects: list[RejectedItem] = []
    raw = json.dumps(doc, ensure_ascii=True).encode("ascii")
    prepare([doc, RawEnvelope(raw, "f", 1)], "test", pending, rejects)
    assert pending == []
    assert [r.reason[: len(reason)] for r in rejects] == [reason, reason], rejects


async def test_the_sink_rejects_them_all_without_asking_the_database(
    database_url: str, aconn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    transactions = 0
    original = PostgresEventSink._transaction

    async def counted(self: PostgresEventSink, *args: Any, **kwargs: Any) -> None:
        nonlocal transactions
        transactions += 1
        await original(self, *args, **kwargs)

    monkeypatch.setattr(PostgresEventSink, "_transaction", counted)
    bad = items([doc for doc, _ in CASES])
    good = [event("v-good", f"g{i}", at=i) for i in range(len(bad))]
    batch = [x for pair in zip(good, bad, strict=True) for x in pair]
    async with PostgresEventSink(database_url, batch_size=10 * len(batch)) as sink:
        result = await sink.emit_many(batch)
    assert transactions == 1  # no bisect, no retry: the server never saw a bad row
    assert result.inserted == len(good)
    assert result.outcomes == ["inserted", "rejected"] * len(good)
    expected = [reason for _, reason in CASES for _ in range(2)]
    assert len(result.rejected) == len(expected)
    for rejection, reason in zip(result.rejected, expected, strict=True):
        assert rejection.reason.startswith(reason), (rejection.reason, reason)
        assert "database" not in rejection.reason
    cur = await aconn.execute(
        "SELECT count(*), count(DISTINCT (position, source)) FROM noetl.event_rejected"
    )
    assert await cur.fetchone() == (len(expected), len(expected))
