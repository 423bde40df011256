"""`NatsEventSink`: publish envelopes to JetStream, for workers that hold no PostgreSQL connection.

Each envelope is published as the same JSON bytes `StdoutEventSink` writes (without the newline) to
``<subject_prefix>.<execution id token>`` (see :mod:`projector.jetstream`), with the
``Nats-Msg-Id`` header set to the event's key and content (execution id and event id, escaped,
since event ids are unique only per execution, and the hash of the published bytes,
:func:`projector.jetstream.msg_id`): JetStream drops a re-publish of the same envelope within the
stream's duplicate window (2 minutes by default), the bridge's idempotent PostgreSQL sink drops the
rest, and an id reused with other content reaches the sink, which reports the conflict. `emit`
returns only after JetStream acknowledged the publish; a publish that is not acknowledged raises
(:class:`~projector.errors.NatsUnavailable` on time-outs and lost connections,
:class:`~projector.errors.PublishRejected` when JetStream refuses) and may be emitted again safely.

`emit_many` is pipelined: the ``HPUB`` lines of the whole list go out in a few buffers, each with
the reply subject ``<inbox>.<call>-<index>`` on one wildcard subscription, and the acknowledgements
are taken off the connection by a :func:`projector.natswire.tap` and matched to their message by
that token; the lines are written with :func:`projector.natswire.write_raw`. Where the connection
does not support those fast paths (:func:`projector.natswire.supported`), nats-py's
``publish_async`` (a future and a task per message, ~3x slower) is the fallback.

::

    async with NatsEventSink("nats://127.0.0.1:4222") as sink:
        await sink.emit(event)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any

import orjson

from . import natswire
from .envelope import DerivedId, ExecutorEvent, IntegerId, format_timestamp
from .errors import NatsUnavailable, ProjectorError, PublishRejected
from .jetstream import (
    DEFAULT_NATS_URL,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    StreamLimits,
    check_prefix,
    connect,
    ensure_stream,
    msg_id,
    require_stream,
    subject_for,
    translate_nats,
)
from .sinks import envelope_bytes

__all__ = ["NatsEventSink", "Published"]

MSG_ID_HEADER = "Nats-Msg-Id"
EXPECTED_STREAM_HEADER = "Nats-Expected-Stream"
#: Bytes of HPUB lines handed to the connection at a time by the pipelined `emit_many`.
WRITE_CHUNK = 256 * 1024


def _envelope(event: ExecutorEvent) -> bytes:
    """`envelope_bytes(event)`, built with orjson (a third of the publisher's time went to
    pydantic's serializer); the same fields in the same order: ids in the JSON type they arrived
    in, `status` always, absent optional fields and a derived event id left out. Falls back to
    `envelope_bytes` for anything orjson cannot write (integers beyond 64 bits)."""
    execution_id = event.execution_id
    data: dict[str, Any] = {
        "execution_id": int(execution_id) if type(execution_id) is IntegerId else execution_id
    }
    event_id = event.event_id
    if event_id is not None and type(event_id) is not DerivedId:
        data["event_id"] = int(event_id) if type(event_id) is IntegerId else event_id
    data["event_type"] = event.event_type
    data["step"] = event.step
    data["status"] = "" if event.status is None else event.status
    created_at = event.created_at
    # orjson writes what format_timestamp writes (in C, without strftime) for UTC times with
    # microseconds from the year 1000 on; anything else takes format_timestamp.
    if created_at.tzinfo is UTC and created_at.microsecond and created_at.year >= 1000:
        data["created_at"] = created_at
    else:
        data["created_at"] = format_timestamp(created_at)
    data["context"] = event.context
    if event.worker_id is not None:
        data["worker_id"] = event.worker_id
    if event.meta is not None:
        data["meta"] = event.meta
    try:
        return orjson.dumps(data, option=orjson.OPT_UTC_Z)
    except (TypeError, orjson.JSONEncodeError):
        return envelope_bytes(event)


class _Batch:
    """One pipelined `emit_many` call waiting for its acknowledgements (filled by `_on_ack`)."""

    __slots__ = ("acks", "done", "error", "remaining")

    def __init__(self, n: int, done: asyncio.Future[None]) -> None:
        self.acks: list[Any] = [None] * n
        self.remaining = n
        self.done = done
        self.error: ProjectorError | None = None

    def fail(self, error: ProjectorError) -> None:
        if self.error is None:
            self.error = error
        if not self.done.done():
            self.done.set_exception(error)


@dataclass(frozen=True)
class Published:
    """JetStream's acknowledgement of one envelope."""

    event_id: str
    subject: str
    stream: str
    seq: int
    #: True when JetStream recognised the event id as already published within its window.
    duplicate: bool


class NatsEventSink:
    """Publishes envelopes to a JetStream stream; an async context manager.

    `stream` must exist unless `create_stream` is true (then it is created with `limits`, see
    :class:`~projector.jetstream.StreamLimits`). `timeout` bounds connecting and each wait for
    JetStream's acknowledgement, in seconds.
    """

    def __init__(
        self,
        url: str = DEFAULT_NATS_URL,
        *,
        stream: str = DEFAULT_STREAM,
        subject_prefix: str = DEFAULT_SUBJECT_PREFIX,
        create_stream: bool = False,
        limits: StreamLimits | None = None,
        timeout: float = 5.0,
        name: str = "noetl-projector-sink",
    ) -> None:
        self.url = url
        self.stream = stream
        self.subject_prefix = check_prefix(subject_prefix)
        self.create_stream = create_stream
        self.limits = limits
        self.timeout = timeout
        self.name = name
        self._nc: Any = None
        self._js: Any = None
        # The pipelined publish (see `emit_many`): acks arrive on `<inbox>.<batch>-<index>`,
        # tapped when the connection supports it (else None: `publish_async`).
        self._tap: natswire.Tap | None = None
        self._inbox = b""
        self._batches: dict[int, _Batch] = {}
        self._batch_no = 0
        self._tokens: dict[str, str] = {}

    async def __aenter__(self) -> NatsEventSink:
        self._nc = await connect(self.url, name=self.name, connect_timeout=self.timeout)
        try:
            self._js = self._nc.jetstream(timeout=self.timeout)
            if self.create_stream:
                await ensure_stream(self._js, self.stream, self.subject_prefix, self.limits)
            else:
                await require_stream(self._js, self.stream)
            await self._start_fast_path()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start_fast_path(self) -> None:
        """Tap the acknowledgement inbox ``<inbox>.*`` (see :mod:`projector.natswire`).

        Only where the connection supports the fast paths (nats-py 2.x); otherwise `emit_many`
        publishes through nats-py's ``publish_async`` (slower, same result).
        """
        nc = self._nc
        if not natswire.supported(nc):
            return
        inbox = nc.new_inbox()
        self._inbox = inbox.encode() + b"."
        self._tap = await natswire.tap(nc, f"{inbox}.*", self._on_ack)

    def _on_ack(
        self, subject: bytes, reply: bytes, data: bytes, status: natswire.Status | None
    ) -> None:
        """One message on the acknowledgement inbox: the answer to publish ``<call>-<index>``."""
        number, _, index = subject[len(self._inbox) :].partition(b"-")
        try:
            batch = self._batches.get(int(number))
            i = int(index)
        except ValueError:  # not an answer to one of our publishes
            return
        if batch is None or batch.error is not None:
            return  # a late answer for a call that already gave up
        if status is not None:
            if status[0] == 503:
                batch.fail(
                    PublishRejected(
                        "no JetStream stream listens on the subject; create one with "
                        "`projector nats init` (is JetStream enabled, nats-server -js?)"
                    )
                )
            else:
                batch.fail(NatsUnavailable(f"NATS answered a publish with {status[0]} {status[1]}"))
            return
        try:
            ack = orjson.loads(data)
            error = ack.get("error")
        except (orjson.JSONDecodeError, AttributeError):
            batch.fail(ProjectorError(f"unreadable JetStream acknowledgement: {data[:200]!r}"))
            return
        if error is not None:
            batch.fail(
                PublishRejected(
                    f"JetStream refused: {error.get('description')} (code {error.get('code')})"
                )
            )
            return
        if batch.acks[i] is None:
            batch.acks[i] = ack
            batch.remaining -= 1
            if batch.remaining == 0 and not batch.done.done():
                batch.done.set_result(None)

    async def aclose(self) -> None:
        """Close the connection (every emit has already been acknowledged or has raised)."""
        nc, self._nc, self._js = self._nc, None, None
        tap, self._tap = self._tap, None
        if tap is not None:
            await tap.close()
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    def subject_for(self, execution_id: str) -> str:
        """The subject this sink publishes `execution_id`'s events to."""
        subject = self._tokens.get(execution_id)
        if subject is None:
            if len(self._tokens) >= 4096:  # a worker's recent executions; bounded
                self._tokens.clear()
            subject = self._tokens[execution_id] = subject_for(execution_id, self.subject_prefix)
        return subject

    def _prepare(self, event: ExecutorEvent) -> tuple[str, str, bytes, str]:
        """``(event id, subject, envelope bytes, Nats-Msg-Id)`` of one event."""
        event_id = event.resolved_event_id()
        data = _envelope(event)
        return (
            event_id,
            self.subject_for(event.execution_id),
            data,
            msg_id(event.execution_id, event_id, data),
        )

    def _jetstream(self) -> Any:
        if self._js is None:
            raise ProjectorError("NatsEventSink is not open; use `async with NatsEventSink(...)`")
        return self._js

    async def emit(self, event: ExecutorEvent) -> Published:
        """Publish one envelope and wait for JetStream's acknowledgement."""
        js = self._jetstream()
        event_id, subject, data, message_id = self._prepare(event)
        try:
            ack = await js.publish(
                subject,
                data,
                timeout=self.timeout,
                stream=self.stream,
                headers={MSG_ID_HEADER: message_id},
            )
        except Exception as exc:
            raise translate_nats(exc, f"publishing event {event_id!r} to {subject}") from exc
        return Published(event_id, subject, ack.stream, ack.seq, bool(ack.duplicate))

    async def emit_many(self, events: Iterable[ExecutorEvent]) -> list[Published]:
        """Publish envelopes pipelined (no round trip each) and wait for every acknowledgement.

        Raises on the first publish that fails, or when not all are acknowledged within
        ``timeout + len(events) / 1000`` seconds; some may be stored already, so emitting the whole
        list again is the way to retry (the broker and the bridge drop the repeats).
        """
        js = self._jetstream()
        prepared = [self._prepare(event) for event in events]
        if self._tap is not None:
            return await self._emit_pipelined(prepared)
        futures: list[asyncio.Future[Any]] = []
        try:
            # One deadline for the whole list (no per-message timer: those cost more than the
            # publish itself), generous enough for a list of any length at a slow broker.
            async with asyncio.timeout(self.timeout + len(prepared) / 1000):
                for _event_id, subject, data, message_id in prepared:
                    futures.append(
                        await js.publish_async(
                            subject, data, stream=self.stream, headers={MSG_ID_HEADER: message_id}
                        )
                    )
                acks = await asyncio.gather(*futures)
        except Exception as exc:
            for future in futures:
                future.cancel()
            done = sum(1 for f in futures if f.done() and not f.cancelled() and not f.exception())
            raise translate_nats(
                exc, f"publishing {len(prepared)} events ({done} acknowledged)"
            ) from exc
        return [
            Published(event_id, subject, ack.stream, ack.seq, bool(ack.duplicate))
            for (event_id, subject, _data, _msg_id), ack in zip(prepared, acks, strict=True)
        ]

    async def _emit_pipelined(self, prepared: list[tuple[str, str, bytes, str]]) -> list[Published]:
        """`emit_many` without nats-py's per-message futures: the HPUB lines of the whole list are
        written in a few buffers, each with reply subject ``<inbox>.<call>-<index>``, and the
        acknowledgements are matched to their message by that token in `_on_ack`."""
        nc = self._nc
        n = len(prepared)
        if not n:
            return []
        max_payload = nc.max_payload
        self._batch_no += 1
        number = self._batch_no
        loop = asyncio.get_running_loop()
        batch = _Batch(n, loop.create_future())
        self._batches[number] = batch
        reply_prefix = self._inbox + b"%d-" % number
        stream_header = f"{EXPECTED_STREAM_HEADER}: {self.stream}\r\n\r\n".encode()
        try:
            async with asyncio.timeout(self.timeout + n / 1000):
                parts: list[bytes] = []
                size = 0
                for i, (event_id, subject, data, message_id) in enumerate(prepared):
                    header = (
                        b"NATS/1.0\r\n"
                        + f"{MSG_ID_HEADER}: {message_id}\r\n".encode()
                        + stream_header
                    )
                    total = len(header) + len(data)
                    if total > max_payload:
                        raise PublishRejected(
                            f"event {event_id!r} is {total} bytes with headers, more than the "
                            f"server's max_payload ({max_payload})"
                        )
                    part = b"HPUB %b %b%d %d %d\r\n%b%b\r\n" % (
                        subject.encode(),
                        reply_prefix,
                        i,
                        len(header),
                        total,
                        header,
                        data,
                    )
                    parts.append(part)
                    size += len(part)
                    if size >= WRITE_CHUNK:
                        await natswire.write_raw(nc, parts)
                        parts, size = [], 0
                if parts:
                    await natswire.write_raw(nc, parts)
                await batch.done
        except Exception as exc:
            doing = f"publishing {n} events ({n - batch.remaining} acknowledged)"
            if isinstance(exc, ProjectorError):
                raise type(exc)(f"{doing}: {exc}") from exc
            raise translate_nats(exc, doing) from exc
        finally:
            self._batches.pop(number, None)
        return [
            Published(event_id, subject, ack["stream"], int(ack["seq"]), bool(ack.get("duplicate")))
            for (event_id, subject, _data, _msg_id), ack in zip(prepared, batch.acks, strict=True)
        ]
