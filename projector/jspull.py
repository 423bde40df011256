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
bytes; :func:`ack_info` reads the reply subject once with one split.

Acknowledgements of a batch are written as one buffer of ``PUB`` lines on the same fast path
(else one ``publish`` each); a ``flush`` round trip per batch confirms the server has them.

Where nats-py's client has the ``_process_msg(sid, subject, reply, data, headers)`` hook its
protocol parser calls (nats-py 2.x), the consumer takes its own subscription's messages there,
before nats-py parses headers and builds a ``Msg`` and queues it for a task; with any other
client it falls back to an ordinary subscription callback, which is slower but equivalent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import nats.errors

__all__ = ["PullConsumer", "Pulled", "ack_info", "hook_signature_ok", "inline_status"]

log = logging.getLogger(__name__)

#: One delivered message: (stream subject, ``$JS.ACK...`` reply subject, payload), all bytes.
Pulled = tuple[bytes, bytes, bytes]

ACK = b"+ACK"
TERM = b"+TERM"
PROGRESS = b"+WPI"
NAK = b"-NAK"

_STATUS_PREFIX = b"NATS/1.0 "


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


def inline_status(headers: bytes) -> tuple[int, str] | None:
    """The inline status of a status message (``NATS/1.0 408 Request Timeout``), else None."""
    if not headers.startswith(_STATUS_PREFIX):
        return None
    line = headers[len(_STATUS_PREFIX) :].split(b"\r\n", 1)[0]
    code, _, text = line.partition(b" ")
    if not code.isdigit():
        return None
    return int(code), text.decode(errors="replace").strip()


def hook_signature_ok(nc: Any) -> bool:
    """True when `nc` has the ``_process_msg(sid, subject, reply, data, headers)`` hook of
    nats-py 2.x that the fast paths take their messages from."""
    hook = getattr(nc, "_process_msg", None)
    if hook is None or not inspect.iscoroutinefunction(hook):
        return False
    try:
        params = list(inspect.signature(hook).parameters)
    except (TypeError, ValueError):
        return False
    return params == ["sid", "subject", "reply", "data", "headers"]


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
        self._sub: Any = None
        self._sid: int | None = None
        self._original_hook: Callable[..., Awaitable[None]] | None = None
        self._fast_path = fast_path
        self._raw_send = False
        #: Statuses seen (code -> count), for tests and curiosity.
        self.statuses: dict[int, int] = {}

    async def start(self) -> None:
        """Subscribe to the private inbox."""
        self._inbox = self._nc.new_inbox()
        if self._fast_path and hook_signature_ok(self._nc):
            self._sub = await self._nc.subscribe(f"{self._inbox}.*")
            self._sid = self._sub._id
            self._original_hook = self._nc._process_msg
            self._nc._process_msg = self._hook
            self._raw_send = callable(getattr(self._nc, "_send_command", None)) and callable(
                getattr(self._nc, "_flush_pending", None)
            )
        else:
            self._sub = await self._nc.subscribe(f"{self._inbox}.*", cb=self._on_msg)

    async def close(self) -> None:
        """Unsubscribe (messages delivered but not fetched are redelivered after ``ack_wait``)."""
        if self._original_hook is not None and self._nc.__dict__.get("_process_msg") == self._hook:
            del self._nc._process_msg
        self._original_hook = None
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None

    # -- receiving ---------------------------------------------------------------------------

    async def _hook(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: Any
    ) -> None:
        if sid != self._sid:
            assert self._original_hook is not None
            await self._original_hook(sid, subject, reply, data, headers)
            return
        if headers:
            status = inline_status(headers)
            if status is not None:
                self._on_status(subject, status)
                return
        self._buffer.append((subject, reply, data))
        if len(self._buffer) >= self._want and self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _on_msg(self, msg: Any) -> None:
        headers = msg.headers
        code = headers.get("Status") if headers else None
        if code is not None and code.isdigit() and not msg.reply:
            self._on_status(msg.subject.encode(), (int(code), headers.get("Description", "")))
            return
        self._buffer.append((msg.subject.encode(), msg.reply.encode(), msg.data))
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
        if self._raw_send:
            if self._nc.is_closed:
                raise nats.errors.ConnectionClosedError
            # The PUB lines nats-py's publish would write, built in one go (reply subjects come
            # from the server's MSG lines: no white space, nothing to validate).
            tail = b" %d\r\n%b\r\n" % (len(payload), payload)
            await self._nc._send_command(b"".join([b"PUB " + msg[1] + tail for msg in msgs]))
            await self._nc._flush_pending()
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
