"""projector.natswire: the version check, taps (fast and fallback), raw writes; a real server."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import nats
import nats.errors
import pytest
from nats.protocol.parser import Parser

from projector import natswire
from projector.natswire import Status
from tests.natsutil import wait_for

pytestmark = pytest.mark.nats

Seen = list[tuple[bytes, bytes, bytes, Status | None]]


def test_only_nats_py_2_is_supported() -> None:
    assert natswire.version_supported("2.16.0")
    assert natswire.version_supported("2.7")
    assert not natswire.version_supported("3.0.0")
    assert not natswire.version_supported("1.9.9")
    assert not natswire.version_supported("0.0.0")  # nats-py's own "version unknown"
    assert not natswire.version_supported("dev")


def test_inline_status_reads_status_lines_only() -> None:
    assert natswire.inline_status(b"NATS/1.0 408 Request Timeout\r\n\r\n") == (
        408,
        "Request Timeout",
    )
    assert natswire.inline_status(b"NATS/1.0 503\r\n\r\n") == (503, "")
    hb = b"NATS/1.0 100 Idle Heartbeat\r\nNats-Last-Consumer: 0\r\n\r\n"
    assert natswire.inline_status(hb) == (100, "Idle Heartbeat")
    assert natswire.inline_status(b"NATS/1.0\r\nNats-Msg-Id: x\r\n\r\n") is None
    assert natswire.inline_status(b"NATS/1.0 abc\r\n\r\n") is None


class _Unlike:
    """A client whose internals are not nats-py 2.x's."""

    def __init__(self, hook: Any) -> None:
        self._process_msg = hook

    async def _send_command(self, cmd: bytes) -> None: ...

    async def _flush_pending(self) -> None: ...


async def test_supported_checks_version_hook_and_write_methods(
    nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def renamed(sid: int, subject: bytes, reply: bytes, payload: bytes, hdr: Any) -> None:
        return None

    def not_async(sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any) -> None:
        return None

    assert not natswire.supported(_Unlike(renamed))
    assert not natswire.supported(_Unlike(not_async))
    assert not natswire.supported(object())
    nc = await nats.connect(nats_url)
    try:
        assert natswire.supported(nc)
        monkeypatch.setattr(natswire, "NATS_PY_VERSION", "3.0.0")
        assert not natswire.supported(nc)
    finally:
        await nc.close()


def _recorder(seen: Seen) -> natswire.Handler:
    def handler(subject: bytes, reply: bytes, data: bytes, status: Status | None) -> None:
        seen.append((subject, reply, data, status))

    return handler


@pytest.mark.parametrize("fast", [True, False])
async def test_tap_delivers_messages_and_statuses_alike_on_both_paths(
    nats_url: str, fast: bool
) -> None:
    nc = await nats.connect(nats_url)
    other = await nats.connect(nats_url)
    try:
        inbox = nc.new_inbox()
        seen: Seen = []
        tap = await natswire.tap(nc, f"{inbox}.*", _recorder(seen), fast=fast)
        assert tap.fast is fast
        # An ordinary subscription on the same connection still goes through nats-py.
        plain = await nc.subscribe(f"{inbox}-plain")
        await nc.flush()
        await other.publish(f"{inbox}.a", b"one", reply="r.1")
        await other.publish(f"{inbox}.b", b"two", headers={"Nats-Msg-Id": "x"})
        await other.publish(f"{inbox}-plain", b"plain")
        # Nobody listens on this subject: the server answers the reply subject with a 503 status.
        await nc.publish(f"nobody.{uuid.uuid4().hex}", b"", reply=f"{inbox}.c")
        await other.flush()

        async def three() -> bool:
            return len(seen) >= 3

        await wait_for(three, "the tapped messages", limit=10)
        # Two connections publish: no order between them.
        assert sorted(seen) == [
            (f"{inbox}.a".encode(), b"r.1", b"one", None),
            (f"{inbox}.b".encode(), b"", b"two", None),
            (f"{inbox}.c".encode(), b"", b"", (503, "")),
        ]
        assert (await plain.next_msg(timeout=5)).data == b"plain"
        await tap.close()
        assert "_process_msg" not in nc.__dict__  # nats-py's own method again
        await other.publish(f"{inbox}.d", b"after")
        await other.publish(f"{inbox}-plain", b"still")
        await other.flush()
        assert (await plain.next_msg(timeout=5)).data == b"still"
        assert len(seen) == 3
    finally:
        await other.close()
        await nc.close()


@pytest.mark.parametrize("close_first", [0, 1])
async def test_two_taps_on_one_connection_are_independent(nats_url: str, close_first: int) -> None:
    nc = await nats.connect(nats_url)
    try:
        inboxes = [nc.new_inbox(), nc.new_inbox()]
        seen: list[Seen] = [[], []]
        taps = [
            await natswire.tap(nc, f"{b}.*", _recorder(s))
            for b, s in zip(inboxes, seen, strict=True)
        ]
        assert all(t.fast for t in taps)
        for n, inbox in enumerate(inboxes):
            await nc.publish(f"{inbox}.m", b"%d" % n)
        await nc.flush()

        async def both() -> bool:
            return all(seen)

        await wait_for(both, "a message on each tap", limit=10)
        assert [[m[2] for m in s] for s in seen] == [[b"0"], [b"1"]]
        await taps[close_first].close()
        assert "_process_msg" in nc.__dict__  # the other tap is still open
        keep = 1 - close_first
        for inbox in inboxes:
            await nc.publish(f"{inbox}.m", b"again")
        await nc.flush()

        async def kept() -> bool:
            return len(seen[keep]) == 2

        await wait_for(kept, "the open tap's message", limit=10)
        assert len(seen[close_first]) == 1
        await taps[keep].close()
        await taps[keep].close()  # closing twice is harmless
        assert "_process_msg" not in nc.__dict__
    finally:
        await nc.close()


async def test_write_raw_sends_protocol_lines_and_refuses_a_closed_connection(
    nats_url: str,
) -> None:
    nc = await nats.connect(nats_url)
    reader = await nats.connect(nats_url)
    try:
        subject = f"raw.{uuid.uuid4().hex}"
        sub = await reader.subscribe(subject)
        await reader.flush()
        lines = [b"PUB %b %d\r\n%b\r\n" % (subject.encode(), len(p), p) for p in (b"a", b"bc")]
        await natswire.write_raw(nc, lines)
        assert [(await sub.next_msg(timeout=5)).data for _ in range(2)] == [b"a", b"bc"]
    finally:
        await reader.close()
        await nc.close()
    with pytest.raises(nats.errors.ConnectionClosedError):
        await natswire.write_raw(nc, [b"PING\r\n"])


async def test_tap_handler_sees_messages_in_order_under_load(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        inbox = nc.new_inbox()
        seen: Seen = []
        tap = await natswire.tap(nc, f"{inbox}.*", _recorder(seen))
        lines = [b"PUB %b.%d 1\r\nx\r\n" % (inbox.encode(), i) for i in range(5000)]
        await natswire.write_raw(nc, lines)
        await nc.flush()

        async def all_in() -> bool:
            await asyncio.sleep(0)
            return len(seen) == 5000

        await wait_for(all_in, "5000 messages", limit=30)
        assert [int(m[0].rpartition(b".")[2]) for m in seen] == list(range(5000))
        await tap.close()
    finally:
        await nc.close()


class _Conn:
    """What nats-py's parser calls on its connection, recorded in one log with the taps'."""

    def __init__(self, log: list[tuple[Any, ...]]) -> None:
        self.log = log
        self._ps = Parser(self)

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
    ) -> None:
        self.log.append(("nats-py", sid, subject, reply, data, headers))

    async def _process_ping(self) -> None:
        self.log.append(("ping",))

    async def _process_pong(self) -> None:
        self.log.append(("pong",))


TAPPED = 7


def _msg(args: bytes, data: bytes, headers: bytes | None = None) -> bytes:
    if headers is None:
        return b"MSG %b %d\r\n%b\r\n" % (args, len(data), data)
    return b"HMSG %b %d %d\r\n%b%b\r\n" % (
        args,
        len(headers),
        len(headers) + len(data),
        headers,
        data,
    )


STREAM = b"".join(
    [
        _msg(b"in.1 7 $JS.ACK.S.d.1.5.5.1700000000000000000.0", b"hello"),
        _msg(b"in.2 7", b"hi"),  # no reply subject
        _msg(b"in.3 7 r.3", b"msg", b"NATS/1.0\r\nNats-Msg-Id: abc\r\n\r\n"),
        _msg(b"in.4 7", b"", b"NATS/1.0 408 Request Timeout\r\n\r\n"),  # a status
        _msg(b"other 8 r.5", b"other"),  # another subscription: nats-py's
        b"PING\r\n",
        _msg(b"in.6 7 r.6", b"a\r\nMSG in 7 1\r\n"),  # a frame inside a payload is payload
        _msg(b"in.7 7", b""),  # empty
        b"+OK\r\n",
        _msg(b"in.8\t7 r.8", b"t"),  # unusual spacing: nats-py reads it
        _msg(b"in.9 7 ", b"d"),  # a doubled space: nats-py reads it
        _msg(b"in.10 7 r.10", b"ok", b"NATS/1.0\r\n\r\n"),
        b"PONG\r\n",
        _msg(b"in.11 7 r.11", b"end"),
    ]
)


async def _parsed(chunks: list[bytes], fast: bool) -> list[tuple[Any, ...]]:
    log: list[tuple[Any, ...]] = []
    conn = _Conn(log)

    def handler(subject: bytes, reply: bytes, data: bytes, status: Status | None) -> None:
        log.append(("tap", subject, reply, data, status))

    if fast:
        dispatcher = natswire._Dispatcher(conn)
        assert dispatcher.parser is conn._ps
        dispatcher.handlers[TAPPED] = handler
        conn._process_msg = dispatcher.hook  # type: ignore[method-assign]
    else:
        handlers = {TAPPED: handler}
        conn._process_msg = natswire._hook(handlers, conn._process_msg)  # type: ignore[method-assign]
    for chunk in chunks:
        await conn._ps.parse(chunk)
    if fast:
        dispatcher.restore(conn)
        assert "parse" not in conn._ps.__dict__
    assert not conn._ps.buf
    return log


async def test_fast_parse_reads_every_frame_as_nats_py_does_however_the_reads_split() -> None:
    expected = await _parsed([STREAM], fast=False)
    assert [e[0] for e in expected].count("tap") == 10
    assert ("tap", b"in.4", b"", b"", (408, "Request Timeout")) in expected
    assert ("tap", b"in.3", b"r.3", b"msg", None) in expected
    assert ("tap", b"in.6", b"r.6", b"a\r\nMSG in 7 1\r\n", None) in expected
    assert await _parsed([STREAM], fast=True) == expected
    for cut in range(1, len(STREAM)):
        assert await _parsed([STREAM[:cut], STREAM[cut:]], fast=True) == expected, cut
    rng = random.Random(15)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(2, 12)))
        chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
        assert await _parsed(chunks, fast=True) == expected, cuts
