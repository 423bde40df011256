"""NatsEventSink against a real NATS server: subjects, acknowledged publishes, broker dedupe."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta, timezone
from typing import Any

import nats
import pytest
from hypothesis import given
from hypothesis import strategies as st

from projector import NatsEventSink, natswire
from projector.envelope import ExecutorEvent
from projector.errors import ConfigurationError, NatsUnavailable, PublishRejected, StreamMissing
from projector.jetstream import (
    MAX_TOKEN_LENGTH,
    StreamLimits,
    ensure_stream,
    msg_id,
    subject_for,
    subject_token,
)
from projector.natsink import _envelope
from projector.sinks import envelope_bytes
from tests.natsutil import Names, _free_port, make_events

pytestmark = pytest.mark.nats


def test_subject_token_keeps_plain_ids_and_escapes_the_rest() -> None:
    assert subject_token("1234567890123456789") == "1234567890123456789"
    assert subject_token("exec_test-1:a") == "exec_test-1:a"
    assert subject_token("exec 1.2") == "exec%201%2E2"
    assert subject_token("a*b>c%d") == "a%2Ab%3Ec%25d"
    assert subject_token("é\t") == "%C3%A9%09"
    assert subject_for("x.y", "noetl.events") == "noetl.events.x%2Ey"


def test_long_ids_are_hashed_into_a_bounded_token() -> None:
    token = subject_token("x" * (MAX_TOKEN_LENGTH + 1))
    assert token.startswith("%H") and len(token) == 42
    assert subject_token("x" * MAX_TOKEN_LENGTH) == "x" * MAX_TOKEN_LENGTH


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=40))
def test_subject_token_is_injective_and_a_single_token(a: str, b: str) -> None:
    ta, tb = subject_token(a), subject_token(b)
    assert all(c not in ta for c in ".*> \t\r\n") and ta.isascii() and ta.isprintable()
    assert (ta == tb) == (a == b)


def test_bad_prefix_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        NatsEventSink(subject_prefix="noetl.*")
    with pytest.raises(ConfigurationError):
        NatsEventSink(subject_prefix="noetl..events")


async def test_emit_publishes_envelope_bytes_with_msg_id(
    nats_url: str, names: Names, js: Any
) -> None:
    event = make_events(1, execution_id="exec 7.a")[0].model_copy(update={"event_id": None})
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        published = await sink.emit(event)
    assert published.event_id == event.resolved_event_id()
    assert published.subject == f"{names.prefix}.exec%207%2Ea"
    assert not published.duplicate
    stored = await js.get_msg(names.stream, published.seq)
    assert stored.subject == published.subject
    assert stored.data == envelope_bytes(event)
    digest = hashlib.blake2b(stored.data, digest_size=16).hexdigest()
    assert stored.headers["Nats-Msg-Id"] == (
        "exec%207%2Ea." + subject_token(published.event_id) + "." + digest
    )


async def test_republishing_an_event_is_dropped_by_the_broker(
    nats_url: str, names: Names, js: Any
) -> None:
    events = make_events(5)
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        first = await sink.emit_many(events)
        again = await sink.emit(events[2])
        many_again = await sink.emit_many(events)
    assert [p.duplicate for p in first] == [False] * 5
    assert again.duplicate and again.seq == first[2].seq
    assert all(p.duplicate for p in many_again)
    info = await js.stream_info(names.stream)
    assert info.state.messages == 5


async def test_same_event_id_in_two_executions_is_not_a_duplicate(
    nats_url: str, names: Names
) -> None:
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        published = await sink.emit_many(make_events(1, "1") + make_events(1, "2"))
    assert [p.duplicate for p in published] == [False, False]


def test_msg_id_is_injective_header_safe_and_carries_the_content_hash() -> None:
    assert msg_id("a.b", "c", b"{}") != msg_id("a", "b.c", b"{}")
    digest = hashlib.blake2b(b"{}", digest_size=16).hexdigest()
    assert msg_id("7", "e\r\nX: y", b"{}") == "7.e%0D%0AX:%20y." + digest
    assert msg_id("7", "e", b'{"a":1}') != msg_id("7", "e", b'{"a":2}')


async def test_missing_stream_raises_unless_asked_to_create(nats_url: str, js: Any) -> None:
    stream = "T_missing_" + _free_port().__str__()
    with pytest.raises(StreamMissing, match="projector nats init"):
        async with NatsEventSink(nats_url, stream=stream, subject_prefix=f"{stream}.ev"):
            pass
    limits = StreamLimits(max_bytes=10 << 20)
    try:
        async with NatsEventSink(
            nats_url,
            stream=stream,
            subject_prefix=f"{stream}.ev",
            create_stream=True,
            limits=limits,
        ) as sink:
            await sink.emit(make_events(1)[0])
        info = await js.stream_info(stream)
        assert info.config.subjects == [f"{stream}.ev.>"]
        assert info.config.storage == "file"
        assert info.config.retention == "limits"  # upstream readers may attach too
        assert info.config.discard == "new"
        assert info.config.max_bytes == 10 << 20
        assert info.config.duplicate_window == limits.duplicate_window
        assert info.config.max_age == limits.max_age
        assert info.state.messages == 1
    finally:
        await js.delete_stream(stream)


async def test_unreachable_server_raises_nats_unavailable() -> None:
    with pytest.raises(NatsUnavailable, match="could not connect"):
        async with NatsEventSink(f"nats://127.0.0.1:{_free_port()}", timeout=1):
            pass


# -- the pipelined emit_many (HPUB lines, one ack inbox, acks matched by reply token) -----------


def _varied_events() -> list[ExecutorEvent]:
    base = make_events(1, execution_id="varied")[0]
    varied = [
        base.model_copy(update={"event_id": None, "status": None}),
        base.model_copy(update={"worker_id": "w-1", "meta": {"k": [1, 2.5, None]}}),
        base.model_copy(
            update={"execution_id": "exec é.1", "context": {"t": "ü\u2028", "f": 1e300}}
        ),
        base.model_copy(update={"context": {"big": 2**70}}),  # beyond orjson: the fallback
        base.model_copy(update={"context": [0.1, -0.0, 1e-7, True, "x"]}),
        base.model_copy(update={"created_at": base.created_at.replace(microsecond=0)}),
        base.model_copy(update={"created_at": base.created_at.replace(microsecond=7)}),
        base.model_copy(update={"created_at": base.created_at.replace(year=999)}),
        base.model_copy(
            update={"created_at": base.created_at.astimezone(timezone(timedelta(hours=2)))}
        ),
    ]
    return [base] + [
        e if e.event_id is None else e.model_copy(update={"event_id": f"v{i}"})
        for i, e in enumerate(varied)
    ]


def test_envelope_bytes_of_the_sink_match_envelope_bytes() -> None:
    for event in _varied_events():
        assert _envelope(event) == envelope_bytes(event)


async def test_pipelined_emit_many_matches_every_ack_to_its_event(
    nats_url: str, names: Names, js: Any
) -> None:
    events = [e for x in range(7) for e in make_events(300, execution_id=f"x{x}")]
    events += _varied_events()
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        assert sink._tap is not None and sink._tap.fast  # nats-py 2.x: the fast path is taken
        published = await sink.emit_many(events)
        again = await sink.emit_many(events[::100])
    assert len(published) == len(events)
    assert sorted(p.seq for p in published) == list(range(1, len(events) + 1))
    pairs = list(zip(events, published, strict=True))
    for event, p in [*pairs[::37], pairs[-3]]:
        stored = await js.get_msg(names.stream, p.seq)
        assert stored.data == envelope_bytes(event)
        assert stored.subject == p.subject == subject_for(event.execution_id, names.prefix)
        assert stored.headers["Nats-Msg-Id"] == msg_id(event.execution_id, p.event_id, stored.data)
    assert all(p.duplicate for p in again)
    assert [p.seq for p in again] == [p.seq for p in published[::100]]


async def test_fallback_without_the_fast_paths_publishes_the_same(
    nats_url: str, names: Names, js: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = make_events(50)
    # As with a nats-py whose internals projector.natswire does not know.
    monkeypatch.setattr(natswire, "NATS_PY_VERSION", "3.0.0")
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        assert sink._tap is None
        assert "_process_msg" not in sink._nc.__dict__
        published = await sink.emit_many(events)
        again = await sink.emit_many(events[:5])
    assert [p.seq for p in published] == list(range(1, 51))
    assert [p.duplicate for p in again] == [True] * 5
    assert (await js.get_msg(names.stream, 50)).data == envelope_bytes(events[-1])


async def test_subject_without_a_stream_is_rejected(nats_url: str, names: Names) -> None:
    async with NatsEventSink(
        nats_url, stream=names.stream, subject_prefix=f"nostream{uuid.uuid4().hex[:8]}.ev"
    ) as sink:
        with pytest.raises(PublishRejected, match="no JetStream stream"):
            await sink.emit_many(make_events(3))
        with pytest.raises(PublishRejected, match="no JetStream stream"):
            await sink.emit(make_events(1)[0])


async def test_subject_of_another_stream_is_rejected(nats_url: str, names: Names, js: Any) -> None:
    other = f"T_other_{uuid.uuid4().hex[:8]}"
    await ensure_stream(js, other, f"{other}.ev")
    try:
        async with NatsEventSink(nats_url, stream=other, subject_prefix=names.prefix) as sink:
            with pytest.raises(PublishRejected, match="JetStream refused"):
                await sink.emit_many(make_events(3))
        assert (await js.stream_info(names.stream)).state.messages == 0
    finally:
        await js.delete_stream(other)


async def test_oversized_event_is_rejected_before_anything_is_sent(
    nats_url: str, names: Names, js: Any
) -> None:
    events = make_events(3)
    async with NatsEventSink(nats_url, stream=names.stream, subject_prefix=names.prefix) as sink:
        big = events[1].model_copy(update={"context": {"pad": "x" * sink._nc.max_payload}})
        with pytest.raises(PublishRejected, match="max_payload"):
            await sink.emit_many([events[0], big, events[2]])
        assert (await js.stream_info(names.stream)).state.messages == 0
        # The sink is still usable.
        assert len(await sink.emit_many(events)) == 3


async def test_unanswered_publishes_time_out(nats_url: str, names: Names) -> None:
    # A plain subscriber on a subject no stream covers: the messages are delivered, nobody acks.
    prefix = f"plain{uuid.uuid4().hex[:8]}.ev"
    nc = await nats.connect(nats_url)
    try:
        await nc.subscribe(f"{prefix}.>")
        await nc.flush()
        async with NatsEventSink(
            nats_url, stream=names.stream, subject_prefix=prefix, timeout=0.5
        ) as sink:
            with pytest.raises(NatsUnavailable, match=r"publishing 3 events \(0 acknowledged\)"):
                await sink.emit_many(make_events(3))
            assert not sink._batches  # nothing left waiting
    finally:
        await nc.close()


def test_a_nats_url_may_name_several_servers() -> None:
    from projector.jetstream import servers

    assert servers("nats://a:4222") == ["nats://a:4222"]
    assert servers(" nats://a:4222 , nats://b:4223,") == ["nats://a:4222", "nats://b:4223"]
    # A comma that no scheme follows is part of the URL (here its password).
    assert servers("nats://u:pa,ss@a:4222,tls://b:4223") == [
        "nats://u:pa,ss@a:4222",
        "tls://b:4223",
    ]
    with pytest.raises(NatsUnavailable, match="no NATS server"):
        servers(" , ")
    # nats-py reads schemes in lower case only (NATS:// would be host "nats", port 4222)
    assert servers("WSS://a:443,wss://b:443") == ["wss://a:443", "wss://b:443"]
    assert servers("NATS://u:Pw@a:4222") == ["nats://u:Pw@a:4222"]
    assert servers("127.0.0.1:4222") == ["nats://127.0.0.1:4222"]  # as nats-py reads it
    # Another scheme, or a list of both kinds, is a usage error before any connection (or name
    # lookup) is tried; the message shows no user, token or password.
    with pytest.raises(ConfigurationError, match=r"'http://a:4222' is not a NATS server URL"):
        servers("nats://b:4222,http://a:4222")
    for url in ("https://u:secret@a:4222", "http://secret@a:4222", "http://a:4222/?token=secret"):
        with pytest.raises(ConfigurationError) as raised:
            servers(url)
        assert "secret" not in str(raised.value) and "a:4222" in str(raised.value)
    with pytest.raises(ConfigurationError, match="mixes WebSocket"):
        servers("nats://a:4222,ws://b:8080")


async def test_a_server_of_the_list_that_is_down_is_passed_over(
    nats_url: str, names: Names, js: Any
) -> None:
    """A cluster's URL list with one node down: the sink connects to another and publishes."""
    down = f"nats://127.0.0.1:{_free_port()}"  # a loopback port nobody listens on
    for url in (f"{down},{nats_url}", f"{nats_url},{down}"):
        async with NatsEventSink(url, stream=names.stream, subject_prefix=names.prefix) as sink:
            await sink.emit(make_events(1, execution_id=url)[0])
    info = await js.stream_info(names.stream)
    assert info.state.messages == 2
