"""One contract every sink passes: the same envelopes in, the same observable results out.

As eventsourcing runs one recorder test suite over every backend, each test here runs over every
sink below. A sink is driven through a small adapter (`Subject`) that delivers envelopes the way a
producer would and reports what can be observed afterwards: what ends up stored or written, read
back the way its consumer reads it, and how many duplicates and conflicts the sink reported. What
a sink cannot observe is said in its `Contract`, and the tests assert what the sink does instead
(nothing is skipped):

* ``noop``: `NoopSink`; keeps nothing, reports nothing (it only has to accept every envelope).
* ``stdout``: `StdoutEventSink`; its NDJSON read back through `projector ingest`'s reader and
  `ExecutorEvent.parse_json`. It writes every emit: a repeat is written again (the same envelope:
  `projector ingest` stores it once when it has an id, and as a second event when it has none,
  since identical id-less rows of one file are distinct events), and so is an envelope reusing an
  id with other content.
* ``postgres emit`` / ``postgres emit_many``: `PostgresEventSink`, rows read from `noetl.event`;
  duplicates counted once (``"duplicate"`` / `BatchResult.duplicates`), conflicts reported
  (`EventConflict` raised / `BatchResult.conflicts`), the stored row kept.
* ``nats emit`` / ``nats emit_many`` + bridge: `NatsEventSink`, then `Bridge` (``until_empty``)
  into PostgreSQL. A repeat within the stream's duplicate window is dropped by JetStream
  (`Published.duplicate`); an envelope reusing an id with other content is not (its
  ``Nats-Msg-Id`` carries the content hash): it reaches the bridge, which reports the conflict
  and keeps the stored row.
* ``nats fallback``: the same as ``nats emit_many`` with `projector.natswire`'s fast paths off (a
  nats-py version it does not know): nats-py's ``publish_async`` and subscription callbacks.
* ``bridge``: envelopes published without ``Nats-Msg-Id`` (as after the duplicate window, or
  from a producer that sets none), so the bridge itself meets the repeat and the conflict:
  `BridgeStats.duplicates` and `BridgeStats.conflicts`, the stored row kept.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import nats
import psycopg
import pytest

from projector import (
    EventConflict,
    ExecutorEvent,
    NatsEventSink,
    NoopSink,
    PostgresEventSink,
    StdoutEventSink,
    natswire,
)
from projector.bridge import Bridge, BridgeConfig
from projector.ingest import read_items
from projector.jetstream import ensure_stream, subject_for
from projector.sinks import EventSink, envelope_bytes
from tests.natsutil import unique_names

Key = tuple[str, str]


@dataclass(frozen=True)
class Contract:
    """What a sink shows, said explicitly (module docstring)."""

    #: Why nothing the sink was given can be read back; None when it can.
    keeps_nothing: str | None = None
    #: True: a repeated envelope is kept once and reported as a duplicate. False: it is written
    #: again, unchanged (and nothing is reported).
    deduplicates: bool = True
    #: What becomes of an envelope reusing a stored id with other content: ``reported`` (a
    #: conflict, the stored row kept), ``written`` (written like any other envelope),
    #: ``nothing`` (nothing observable).
    conflict: Literal["reported", "written", "nothing"] = "reported"


@dataclass
class Observed:
    """What one delivery left behind."""

    #: What is stored (or written) in total so far, read back; None when nothing can be.
    records: list[ExecutorEvent] | None
    #: Duplicates and conflicts the sink reported for this delivery (0 when it reports none).
    duplicates: int = 0
    conflicts: int = 0
    #: What each `emit` returned, in order (empty for batch deliveries).
    returned: list[object] = field(default_factory=list)


class Subject:
    """A sink under test: `deliver` hands it envelopes and says what can be observed."""

    contract = Contract()

    async def deliver(self, events: Sequence[ExecutorEvent]) -> Observed:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


class NoopSubject(Subject):
    contract = Contract(
        keeps_nothing="NoopSink drops every event", deduplicates=False, conflict="nothing"
    )

    def __init__(self) -> None:
        self.sink = NoopSink()

    async def deliver(self, events: Sequence[ExecutorEvent]) -> Observed:
        return Observed(None, returned=[await self.sink.emit(e) for e in events])


class StdoutSubject(Subject):
    contract = Contract(deduplicates=False, conflict="written")

    def __init__(self) -> None:
        self.out = io.StringIO()
        self.sink = StdoutEventSink(self.out)

    async def deliver(self, events: Sequence[ExecutorEvent]) -> Observed:
        returned = [await self.sink.emit(e) for e in events]
        reader = io.BufferedReader(io.BytesIO(self.out.getvalue().encode("utf-8")))
        # What was written, line by line (the reader's own verdict would number an id-less
        # repeat as a second event of the source: identical id-less rows of one file are
        # distinct events).
        records = [
            ExecutorEvent.parse_json(bytes(item.raw)) for item in read_items(reader, "stdout")
        ]
        return Observed(records, returned=returned)


async def stored_rows(database_url: str) -> list[ExecutorEvent]:
    """Every row of noetl.event as an envelope (in a stable order)."""
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cur = await conn.execute(
            "SELECT execution_id, event_id, event_type, step, status, created_at, context, "
            "worker_id, meta FROM noetl.event ORDER BY execution_id, event_id, created_at"
        )
        names = [d.name for d in cur.description or []]
        return [ExecutorEvent(**dict(zip(names, row, strict=True))) for row in await cur.fetchall()]


class PostgresSubject(Subject):
    def __init__(self, database_url: str, batch: bool) -> None:
        self.database_url = database_url
        self.batch = batch
        self.sink = PostgresEventSink(database_url)

    async def deliver(self, events: Sequence[ExecutorEvent]) -> Observed:
        if self.batch:
            result = await self.sink.emit_many(events)
            assert result.inserted + result.duplicates + result.conflicts == len(events)
            observed = Observed(None, result.duplicates, result.conflicts)
        else:
            observed = Observed(None)
            for event in events:
                try:
                    outcome = await self.sink.emit(event)
                except EventConflict as exc:
                    assert (exc.execution_id, exc.event_id) == key(event)
                    outcome = "conflict"
                    observed.conflicts += 1
                observed.duplicates += outcome == "duplicate"
                observed.returned.append(outcome)
        observed.records = await stored_rows(self.database_url)
        return observed

    async def aclose(self) -> None:
        await self.sink.close()


class NatsSubject(Subject):
    """Publish (through `NatsEventSink`, or bare), then drain the stream with the bridge."""

    def __init__(self, nats_url: str, database_url: str, how: str) -> None:
        self.nats_url = nats_url
        self.database_url = database_url
        self.how = how
        self.names = unique_names()
        self.contract = Contract()
        self.sink = NatsEventSink(
            nats_url, stream=self.names.stream, subject_prefix=self.names.prefix
        )
        self.nc: Any = None

    async def open(self) -> None:
        self.nc = await nats.connect(self.nats_url)
        await ensure_stream(self.nc.jetstream(), self.names.stream, self.names.prefix)
        await self.sink.__aenter__()
        # The pipelined publisher (and the bridge's pull consumer) on natswire's fast paths,
        # unless they were switched off for the fallback variant.
        tap = self.sink._tap
        assert (tap is not None and tap.fast) is natswire.supported(self.sink._nc)

    async def deliver(self, events: Sequence[ExecutorEvent]) -> Observed:
        observed = Observed(None)
        if self.how == "emit":
            for event in events:
                published = await self.sink.emit(event)
                assert published.event_id == event.resolved_event_id()
                observed.duplicates += published.duplicate
                observed.returned.append(published)
        elif self.how == "emit_many":
            published_all = await self.sink.emit_many(events)
            assert [p.event_id for p in published_all] == [e.resolved_event_id() for e in events]
            observed.duplicates += sum(p.duplicate for p in published_all)
        else:  # bare: no Nats-Msg-Id, so the broker keeps every copy
            js = self.nc.jetstream()
            for event in events:
                await js.publish(
                    subject_for(event.execution_id, self.names.prefix), envelope_bytes(event)
                )
        config = BridgeConfig(
            nats_url=self.nats_url,
            stream=self.names.stream,
            subject_prefix=self.names.prefix,
            durable=self.names.durable,
            until_empty=True,
            log_interval=0,
        )
        stats = await Bridge(self.database_url, config).run()
        assert stats.rejected == 0 and stats.pending == 0 and stats.ack_pending == 0
        observed.duplicates += stats.duplicates
        observed.conflicts += stats.conflicts
        observed.records = await stored_rows(self.database_url)
        return observed

    async def aclose(self) -> None:
        await self.sink.aclose()
        if self.nc is not None:
            await self.nc.jetstream().delete_stream(self.names.stream)
            await self.nc.close()


SUBJECTS = [
    pytest.param("noop", id="noop"),
    pytest.param("stdout", id="stdout"),
    pytest.param("postgres emit", id="postgres-emit"),
    pytest.param("postgres emit_many", id="postgres-emit_many"),
    pytest.param("nats emit", id="nats-emit+bridge", marks=pytest.mark.nats),
    pytest.param("nats emit_many", id="nats-emit_many+bridge", marks=pytest.mark.nats),
    pytest.param("nats fallback", id="nats-fallback+bridge", marks=pytest.mark.nats),
    pytest.param("nats bare", id="bridge", marks=pytest.mark.nats),
]


@pytest.fixture(params=SUBJECTS)
async def subject(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    kind: str = request.param
    made: Subject
    if kind == "noop":
        made = NoopSubject()
    elif kind == "stdout":
        made = StdoutSubject()
    elif kind.startswith("postgres"):
        made = PostgresSubject(request.getfixturevalue("database_url"), kind.endswith("many"))
        await made.sink.open()
    else:
        how = kind.split()[1]
        if how == "fallback":  # as with a nats-py whose internals natswire does not know
            request.getfixturevalue("monkeypatch").setattr(natswire, "NATS_PY_VERSION", "3.0.0")
            how = "emit_many"
        nats_url = request.getfixturevalue("nats_url")
        made = NatsSubject(nats_url, request.getfixturevalue("database_url"), how)
        await made.open()
    try:
        yield made
    finally:
        await made.aclose()


# -- the envelopes ---------------------------------------------------------------------------

AT = "2026-11-30T12:00:00.123456Z"


def envelopes() -> list[ExecutorEvent]:
    """The same envelopes for every sink: integer, string and derived ids, the Python
    producer's spelling, unicode, nested context, meta and worker ids."""
    wire: list[dict[str, Any]] = [
        {  # the Rust crate's integer ids
            "execution_id": 7380012345678901234,
            "event_id": 42,
            "event_type": "command.completed",
            "step": "fetch_users",
            "status": "COMPLETED",
            "created_at": AT,
            "context": {"rows": 12},
        },
        {  # string ids, worker id and meta
            "execution_id": "exec-1",
            "event_id": "e-1",
            "event_type": "command.started",
            "step": "load",
            "status": "RUNNING",
            "created_at": "2026-11-30T12:00:01Z",
            "context": {},
            "worker_id": "w-1",
            "meta": {"attempt": 2, "tags": ["a", "b"]},
        },
        {  # no event id: derived from the content; no status
            "execution_id": "exec-1",
            "event_type": "step.heartbeat",
            "step": "load",
            "created_at": "2026-11-30T12:00:02.5Z",
            "context": {"progress": 0.5},
        },
        {  # unicode in ids, names and context (subject escaping, jsonb, NDJSON)
            "execution_id": "exec é.1",
            "event_id": "ü-1",
            "event_type": "command.completed",
            "step": "шаг",
            "status": "COMPLETED",
            "created_at": AT,
            "context": {"text": "héllo ✓ 😀", "sep": "a\u2028b", "quote": 'say "hi"\n'},
        },
        {  # nested context
            "execution_id": "exec-2",
            "event_id": "nested",
            "event_type": "command.completed",
            "step": "transform",
            "status": "COMPLETED",
            "created_at": AT,
            "context": {
                "result": {"rows": [{"id": 1, "tags": ["x", {"deep": [1.5, None, True]}]}]},
                "empty": {},
                "list": [],
                "big": 2**62,
            },
        },
        {  # the Python report_event spelling, with a field the envelope does not know
            "execution_id": "exec-2",
            "event_id": "py-1",
            "name": "action.completed",
            "node_name": "notify",
            "status": "COMPLETED",
            "created_at": AT,
            "payload": {"sent": True},
            "meta": {"source": "python"},
            "trace_id": "abc123",
        },
    ]
    return [ExecutorEvent.model_validate(w) for w in wire]


def key(event: ExecutorEvent) -> Key:
    return event.execution_id, event.resolved_event_id()


def wire(events: Sequence[ExecutorEvent]) -> list[dict[str, Any]]:
    """Envelopes as comparable JSON (timestamps in the wire form), with their ids as stored: text,
    derived ids filled in (the JSON out writes integer ids as integers and no derived id)."""
    return [
        {
            **e.model_dump(mode="json"),
            "execution_id": str(e.execution_id),
            "event_id": str(e.resolved_event_id()),
        }
        for e in events
    ]


def sent_as(events: Sequence[ExecutorEvent]) -> list[dict[str, Any]]:
    """What a sink must keep of envelopes it was given: the same, with derived ids filled in."""
    return wire(events)


def by_key(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda w: (w["execution_id"], w.get("event_id") or ""))


# -- the contract ----------------------------------------------------------------------------


async def test_every_envelope_is_kept_as_sent(subject: Subject) -> None:
    sent = envelopes()
    observed = await subject.deliver(sent)
    assert (observed.duplicates, observed.conflicts) == (0, 0)
    if subject.contract.keeps_nothing:
        assert observed.records is None
        assert observed.returned == [None] * len(sent)
        return
    assert observed.records is not None
    assert by_key(wire(observed.records)) == by_key(sent_as(sent))
    kept = {key(e) for e in observed.records}
    assert ("7380012345678901234", "42") in kept  # integer ids as exact decimal strings
    derived = sent[2].resolved_event_id()
    assert derived.startswith("sha256:") and ("exec-1", derived) in kept
    python = next(e for e in observed.records if e.event_id == "py-1")
    assert (python.event_type, python.step, python.context) == (
        "action.completed",
        "notify",
        {"sent": True},
    )
    assert python.meta == {"source": "python", "unknown_fields": {"trace_id": "abc123"}}


async def test_a_redelivered_envelope_is_kept_once(subject: Subject) -> None:
    sent = envelopes()
    first, again = sent[1], sent[2]  # an explicit id and a derived one
    observed = await subject.deliver([first, again, first, again])
    if subject.contract.keeps_nothing:
        assert observed.records is None and observed.duplicates == 0
        return
    assert observed.records is not None
    if subject.contract.deduplicates:
        assert by_key(wire(observed.records)) == by_key(sent_as([first, again]))
        assert observed.duplicates == 2
    else:  # written again, unchanged: a reader that stores by id stores it once
        assert wire(observed.records) == sent_as([first, again, first, again])
        assert observed.duplicates == 0
    assert observed.conflicts == 0


async def test_emitting_everything_again_is_safe(subject: Subject) -> None:
    sent = envelopes()
    await subject.deliver(sent)
    observed = await subject.deliver(sent)
    if subject.contract.keeps_nothing:
        assert observed.records is None
        return
    assert observed.records is not None
    if subject.contract.deduplicates:
        assert by_key(wire(observed.records)) == by_key(sent_as(sent))
        assert (observed.duplicates, observed.conflicts) == (len(sent), 0)
    else:
        assert wire(observed.records) == sent_as(sent + sent)


async def test_same_id_with_other_content_keeps_the_first(subject: Subject) -> None:
    sent = envelopes()
    original = sent[4]
    other = original.model_copy(update={"context": {"result": "something else"}})
    derived = sent[2]
    observed = await subject.deliver([original, derived, other])
    conflict = subject.contract.conflict
    if conflict == "nothing":
        assert observed.records is None and (observed.duplicates, observed.conflicts) == (0, 0)
        return
    assert observed.records is not None
    if conflict == "written":
        assert wire(observed.records) == sent_as([original, derived, other])
        assert (observed.duplicates, observed.conflicts) == (0, 0)
        return
    assert by_key(wire(observed.records)) == by_key(sent_as([original, derived]))
    assert conflict == "reported"
    assert (observed.duplicates, observed.conflicts) == (0, 1)
    # The conflict did not stop the sink: a later envelope is still kept.
    later = await subject.deliver([sent[0]])
    assert later.records is not None
    assert by_key(wire(later.records)) == by_key(sent_as([original, derived, sent[0]]))


async def test_every_subject_is_an_event_sink(subject: Subject) -> None:
    sink = getattr(subject, "sink", None)
    assert isinstance(sink, EventSink)
