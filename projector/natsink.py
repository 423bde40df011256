"""`NatsEventSink`: publish envelopes to JetStream, for workers that hold no PostgreSQL connection.

Each envelope is published as the same JSON bytes `StdoutEventSink` writes (without the newline) to
``<subject_prefix>.<execution id token>`` (see :mod:`projector.jetstream`), with the
``Nats-Msg-Id`` header set to the event's id (execution id and event id, escaped, since event ids
are unique only per execution): JetStream drops a re-publish of the same event within
the stream's duplicate window (2 minutes by default), and the bridge's idempotent PostgreSQL sink
drops the rest. `emit` returns only after JetStream acknowledged the publish; a publish that is not
acknowledged raises (:class:`~projector.errors.NatsUnavailable` on time-outs and lost connections,
:class:`~projector.errors.PublishRejected` when JetStream refuses) and may be emitted again safely.

::

    async with NatsEventSink("nats://127.0.0.1:4222") as sink:
        await sink.emit(event)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from .envelope import ExecutorEvent
from .errors import ProjectorError
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

    async def __aenter__(self) -> NatsEventSink:
        self._nc = await connect(self.url, name=self.name, connect_timeout=self.timeout)
        try:
            self._js = self._nc.jetstream(timeout=self.timeout)
            if self.create_stream:
                await ensure_stream(self._js, self.stream, self.subject_prefix, self.limits)
            else:
                await require_stream(self._js, self.stream)
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

    async def aclose(self) -> None:
        """Close the connection (every emit has already been acknowledged or has raised)."""
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    def subject_for(self, execution_id: str) -> str:
        """The subject this sink publishes `execution_id`'s events to."""
        return subject_for(execution_id, self.subject_prefix)

    def _prepare(self, event: ExecutorEvent) -> tuple[str, str, bytes, dict[str, str]]:
        event = event.with_event_id()
        event_id = event.resolved_event_id()
        return (
            event_id,
            self.subject_for(event.execution_id),
            envelope_bytes(event),
            {MSG_ID_HEADER: msg_id(event.execution_id, event_id)},
        )

    def _jetstream(self) -> Any:
        if self._js is None:
            raise ProjectorError("NatsEventSink is not open; use `async with NatsEventSink(...)`")
        return self._js

    async def emit(self, event: ExecutorEvent) -> Published:
        """Publish one envelope and wait for JetStream's acknowledgement."""
        js = self._jetstream()
        event_id, subject, data, headers = self._prepare(event)
        try:
            ack = await js.publish(
                subject, data, timeout=self.timeout, stream=self.stream, headers=headers
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
        futures: list[asyncio.Future[Any]] = []
        try:
            # One deadline for the whole list (no per-message timer: those cost more than the
            # publish itself), generous enough for a list of any length at a slow broker.
            async with asyncio.timeout(self.timeout + len(prepared) / 1000):
                for _event_id, subject, data, headers in prepared:
                    futures.append(
                        await js.publish_async(subject, data, stream=self.stream, headers=headers)
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
            for (event_id, subject, _data, _headers), ack in zip(prepared, acks, strict=True)
        ]
