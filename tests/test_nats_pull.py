"""The bridge's hand-written pull consumer: status messages, short batches, ack subjects."""

from __future__ import annotations

import time
from typing import Any

import nats
import pytest
from nats.js import api

from projector import natswire
from projector.jspull import ACK, PullConsumer, ack_info, ack_positions
from tests.natsutil import Names, wait_for

pytestmark = pytest.mark.nats


def test_ack_info_reads_both_reply_subject_formats() -> None:
    assert ack_info(b"$JS.ACK.S.d.3.1042.17.1700000000000000000.5") == (3, 1042, 5)
    newer = b"$JS.ACK.hub.ACCHASH.S.d.1.7.6.1700000000000000000.0.x9Zq"
    assert ack_info(newer) == (1, 7, 0)
    with pytest.raises(ValueError):
        ack_info(b"_INBOX.abc")


def test_ack_positions_reads_a_batch_as_ack_info_reads_each_message() -> None:
    replies = [
        b"$JS.ACK.S.d.1.1042.17.1700000000000000000.5",
        b"$JS.ACK.S.d.3.1043.18.1700000000000000000.4",
        b"_INBOX.abc",
        b"$JS.ACK.hub.ACCHASH.S.d.1.7.6.1700000000000000000.0.x9Zq",
        b"$JS.ACK.S.d.2.1044.19.1700000000000000000.x",  # not a number: not an ack subject
        b"$JS.ACK.S.d.02.1045.20.1700000000000000000.3",
        b"$JS.ACK.S.d.one.1046.21.1700000000000000000.2",
        b"$JS.ACK.hub.ACCHASH.S.d.9.8.7.1700000000000000000.1",
    ]
    msgs = [(b"s", reply, b"{}") for reply in replies]
    expected: list[int | None] = []
    redelivered, pending = 0, None
    for reply in replies:
        try:
            delivered, sequence, pending = ack_info(reply)
        except ValueError:
            expected.append(None)
        else:
            expected.append(sequence)
            redelivered += delivered > 1
    assert (
        ack_positions(msgs)
        == (expected, redelivered, pending)
        == (
            [1042, 1043, None, 7, None, 1045, None, 8],
            3,
            1,
        )
    )
    assert ack_positions([]) == ([], 0, None)
    assert ack_positions(msgs[2:3]) == ([None], 0, None)


#: fast: natswire's fast paths; fallback: `fast_path=False`; unknown: a nats-py version natswire
#: does not know (the fast paths are refused and the consumer falls back by itself).
MODES = ["fast", "fallback", "unknown nats-py"]


async def consumer(
    nats_url: str, names: Names, mode: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, PullConsumer]:
    if mode == "unknown nats-py":
        monkeypatch.setattr(natswire, "NATS_PY_VERSION", "3.0.0")
    fast_path = mode != "fallback"
    nc = await nats.connect(nats_url)
    await nc.jetstream().add_consumer(
        names.stream,
        api.ConsumerConfig(
            durable_name=names.durable,
            ack_policy=api.AckPolicy.EXPLICIT,
            filter_subject=f"{names.prefix}.>",
        ),
    )
    puller = PullConsumer(nc, names.stream, names.durable, fast_path=fast_path)
    await puller.start()
    assert puller._tap is not None and puller._tap.fast is (mode == "fast")
    assert ("_process_msg" in nc.__dict__) is (mode == "fast")
    return nc, puller


@pytest.mark.parametrize("mode", MODES)
async def test_no_messages_is_an_empty_batch_not_an_error(
    nats_url: str, names: Names, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nc, puller = await consumer(nats_url, names, mode, monkeypatch)
    try:
        started = time.monotonic()
        assert await puller.fetch(10, 0) == []  # no_wait: answered with 404 at once
        assert time.monotonic() - started < 2.0
        assert puller.statuses.get(404)
        started = time.monotonic()
        assert await puller.fetch(10, 0.3) == []  # then a waiting request: 408 when it expires
        assert 0.2 < time.monotonic() - started < 2.0
        assert puller.statuses.get(408)
    finally:
        await puller.close()
        await nc.close()


@pytest.mark.parametrize("mode", MODES)
async def test_batch_larger_than_what_is_there_returns_what_is_there(
    nats_url: str, names: Names, js: Any, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(5):
        await js.publish(f"{names.prefix}.x", b"m%d" % i, headers={"Nats-Msg-Id": f"m{i}"})
    nc, puller = await consumer(nats_url, names, mode, monkeypatch)
    try:
        started = time.monotonic()
        msgs = await puller.fetch(100, 5.0)
        assert time.monotonic() - started < 2.0  # the 404 ends the short batch, no waiting
        assert [m[2] for m in msgs] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        assert {m[0] for m in msgs} == {f"{names.prefix}.x".encode()}
        assert [ack_info(m[1])[1] for m in msgs] == [1, 2, 3, 4, 5]
        assert [ack_info(m[1])[0] for m in msgs] == [1] * 5
        # A message published later arrives in a waiting fetch.
        await js.publish(f"{names.prefix}.y", b"late")
        assert [m[2] for m in await puller.fetch(100, 0.5)] == [b"late"]
        await puller.reply_all(msgs, ACK)
        await puller.flush()

        async def five_acked() -> bool:  # the server applies acks asynchronously
            info = await js.consumer_info(names.stream, names.durable)
            return bool(info.num_ack_pending == 1 and info.num_pending == 0)

        await wait_for(five_acked, "the five acks", limit=10)
    finally:
        await puller.close()
        await nc.close()
