"""A lean JetStream pull consumer for the bridge (nats-py's ``fetch`` costs ~80 µs a message).

One subscription on a private wildcard inbox ``<inbox>.*`` receives everything; each batch is
requested by publishing ``{"batch": N, ...}`` to ``$JS.API.CONSUMER.MSG.NEXT.<stream>.<durable>``
with the reply subject ``<inbox>.<request number>``. The server delivers up to N messages (their
MSG line carries the stream subject, the reply subject is the ``$JS.ACK...`` one) and, when it
cannot fill the request, ends it with a status message sent to ``<inbox>.<request number>``:
``404 No Messages`` (``no_wait`` and nothing left), ``408 Request Timeout`` (``expires`` passed),
``409 ... Exceeded`` / ``409 Consumer Deleted`` and the like (the request is over, with a reason),
``100`` idle heartbeats (informational). Status messages never reach the caller as messages; a
status for an older request number is ignored, so a late 408 cannot cut a later batch short.

Every data message that arrives is kept, whichever request it answers, and handed out by the next
`fetch`: nothing the server delivered is dropped (a message that arrives after its fetch gave up
is returned by the following one). A message is a plain tuple ``(subject, reply, data)`` of
bytes; :func:`ack_info` reads the reply subject once with one split (:func:`ack_positions` reads
a whole batch's in one call).

The inbox is a :func:`projector.natswire.tap`: on a connection that supports the fast paths
(nats-py 2.x) its messages are taken off the protocol parser before nats-py parses headers, builds
a ``Msg`` and queues it for a task, and the acknowledgements of a batch are written as one buffer
of ``PUB`` lines (:func:`projector.natswire.write_raw`); otherwise (or with ``fast_path=False``)
an ordinary subscription callback and one ``publish`` per acknowledgement, slower but equivalent.
A ``flush`` round trip per batch confirms the server has the acknowledgements.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from . import natswire

__all__ = ["PullConsumer", "Pulled", "ack_info", "ack_positions", "nak_payload"]

log = logging.getLogger(__name__)

#: One delivered message: (stream subject, ``$JS.ACK...`` reply subject, payload), all bytes.
Pulled = tuple[bytes, bytes, bytes]

ACK = b"+ACK"
TERM = b"+TERM"
PROGRESS = b"+WPI"
NAK = b"-NAK"


def ack_info(reply: bytes) -> tuple[int, int, int]:
    """``(delivered count, stream sequence, pending)`` from a ``$JS.ACK`` reply subject.

    Both forms: ``$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ts>.<pending>`` (9
    tokens, NATS 2.9) and ``$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.
    <sseq>.<cseq>.<ts>.<pending>[.<random>]`` (11 or 12 tokens, newer servers).
    """
    t = reply.split(b".")
    if len(t) == 9:
        return int(t[4]), int(t[5]), int(t[8])
    if len(t) >= 11:
        return int(t[6]), int(t[7]), int(t[10])
    raise ValueError(f"not a JetStream ack subject: {reply!r}")


def ack_positions(msgs: Sequence[Pulled]) -> tuple[list[int | None], int, int | None]:
    """For a batch: each message's stream sequence (None when its reply subject is not
    JetStream's: `ack_info` refuses it), how many were delivered more than once, and the
    pending count of the last message that has one; what `ack_info` reads, in one loop."""
    sequences: list[int | None] = []
    append = sequences.append
    redelivered = 0
    pending: int | None = None
    for _, reply, _ in msgs:
        t = reply.split(b".")
        n = len(t)
        try:
            if n == 9:
                delivered, sequence, last = t[4], int(t[5]), int(t[8])
            elif n >= 11:
                delivered, sequence, last = t[6], int(t[7]), int(t[10])
            else:
                append(None)
                continue
            if delivered != b"1" and int(delivered) > 1:
                redelivered += 1
        except ValueError:
            append(None)
            continue
        append(sequence)
        pending = last
    return sequences, redelivered, pending


class PullConsumer:
    """Batches from a durable pull consumer (module docstring). At most one fetch at a time."""

    def __init__(self, nc: Any, stream: str, durable: str, *, fast_path: bool = True) -> None:
        self._nc = nc
        self._next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._buffer: list[Pulled] = []
        self._request = 0  # number of the request in flight (0: none yet)
        self._want = 0  # wake the fetch when the buffer holds this many
        self._ended: tuple[int, str] | None = None  # status that ended the request in flight
        self._wake: asyncio.Future[None] | None = None
        self._tap: natswire.Tap | None = None
        self._fast_path = fast_path
        #: Statuses seen (code -> count), for tests and curiosity.
        self.statuses: dict[int, int] = {}

    async def start(self) -> None:
        """Subscribe to the private inbox (tapped: see :mod:`projector.natswire`)."""
        self._inbox = self._nc.new_inbox()
        self._tap = await natswire.tap(
            self._nc, f"{self._inbox}.*", self._on_message, fast=self._fast_path
        )

    async def close(self) -> None:
        """Unsubscribe (messages delivered but not fetched are redelivered after ``ack_wait``)."""
        tap, self._tap = self._tap, None
        if tap is not None:
            await tap.close()

    # -- receiving ---------------------------------------------------------------------------

    def _on_message(
        self, subject: bytes, reply: bytes, data: bytes, status: natswire.Status | None
    ) -> None:
        if status is not None:
            self._on_status(subject, status)
            return
        self._buffer.append((subject, reply, data))
        if len(self._buffer) >= self._want and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _on_status(self, subject: bytes, status: tuple[int, str]) -> None:
        code = status[0]
        self.statuses[code] = self.statuses.get(code, 0) + 1
        if code == 100:  # idle heartbeat (or flow control): the request is alive
            return
        number = subject.rpartition(b".")[2]
        if not number.isdigit() or int(number) != self._request:
            return  # the end of an older request that a fetch already gave up on
        if code not in (404, 408):
            log.info("JetStream ended a pull request: %d %s", code, status[1])
        self._ended = status
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    # -- fetching ----------------------------------------------------------------------------

    def _take(self) -> list[Pulled]:
        msgs, self._buffer = self._buffer, []
        return msgs

    async def _pull(self, batch: int, wait: float, body: dict[str, Any]) -> None:
        """Request `batch` more messages; return when they are here, the request ended, or
        after `wait` seconds."""
        self._request += 1
        self._ended = None
        self._want = len(self._buffer) + batch
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        reply = f"{self._inbox}.{self._request}"
        await self._nc.publish(self._next_subject, json.dumps(body).encode(), reply=reply)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake
        finally:
            self._wake = None
            self._want = 0

    async def fetch(self, batch: int, wait: float) -> list[Pulled]:
        """Up to about `batch` messages: what is there at once, else what arrives in `wait` s.

        First a ``no_wait`` request (it ends with a 404/408 status when fewer than `batch` are
        available); only when that brought nothing, a request that waits up to `wait` s for
        messages (``expires``; the server ends it with 408). Returns every data message received
        (also late ones from an earlier request); an empty list when nothing came.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        if len(self._buffer) >= batch:
            return self._take()
        need = batch - len(self._buffer)
        await self._pull(need, max(wait, 1.0) + 4.0, {"batch": need, "no_wait": True})
        if self._buffer or wait <= 0:
            return self._take()
        expires = max(int(wait * 1e9) - 10_000_000, 1_000_000)
        # The server's 408 comes at `expires`; the extra second only covers a lost connection.
        await self._pull(batch, wait + 1.0, {"batch": batch, "expires": expires})
        return self._take()

    # -- acknowledging -----------------------------------------------------------------------

    async def reply_all(self, msgs: Sequence[Pulled], payload: bytes) -> None:
        """Publish `payload` (``+ACK``, ``+TERM``, ``+WPI``, ``-NAK ...``) to each message's
        reply subject; buffered, a `flush` confirms the server has them."""
        if not msgs:
            return
        if self._tap is not None and self._tap.fast:
            # The PUB lines nats-py's publish would write, built in one go (reply subjects come
            # from the server's MSG lines: no white space, nothing to validate).
            tail = b" %d\r\n%b\r\n" % (len(payload), payload)
            await natswire.write_raw(self._nc, [b"PUB " + msg[1] + tail for msg in msgs])
            return
        publish = self._nc.publish
        for msg in msgs:
            await publish(msg[1].decode(), payload)

    async def flush(self, limit: float = 5.0) -> None:
        """One round trip (at most `limit` s): the server has everything published so far."""
        await self._nc.flush(timeout=limit)


def nak_payload(delay: float) -> bytes:
    """``-NAK`` asking for redelivery after `delay` seconds."""
    if delay <= 0:
        return NAK
    return NAK + b" " + json.dumps({"delay": int(delay * 1e9)}).encode()
