"""Event sinks that need no database: the `EventSink` protocol, `EventEmitter`, `NoopSink` and
`StdoutEventSink`, mirroring the Rust executor's `events.rs`.

`PostgresEventSink` (durable) lives in :mod:`projector.pgsink`, `NatsEventSink` in
:mod:`projector.natsink`.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO, runtime_checkable

from .envelope import ExecutorEvent, IntegerId

__all__ = ["EventEmitter", "EventSink", "NoopSink", "StdoutEventSink", "envelope_bytes"]


@runtime_checkable
class EventSink(Protocol):
    """Anything an executor can hand its events to. `emit` returns once the sink has the event."""

    async def emit(self, event: ExecutorEvent) -> object: ...


def envelope_bytes(event: ExecutorEvent) -> bytes:
    """The wire form of an envelope: `model_dump_json()`, what the Rust structs read.

    Ids are written in the JSON type they arrived in, `status` always (``""`` for none), and an
    id this project derived is left out: `projector ingest` and the bridge derive the same id from
    the same bytes. `StdoutEventSink` writes these bytes plus a newline and `NatsEventSink`
    publishes them.
    """
    return event.model_dump_json().encode("utf-8")


class NoopSink:
    """Drops every event. Useful in tests and as a default."""

    async def emit(self, event: ExecutorEvent) -> None:
        return None


class StdoutEventSink:
    """Writes one envelope per line as JSON (NDJSON, :func:`envelope_bytes`) to a text stream,
    stdout by default."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    async def emit(self, event: ExecutorEvent) -> None:
        stream = self._stream if self._stream is not None else sys.stdout
        stream.write(envelope_bytes(event).decode("utf-8") + "\n")
        stream.flush()


class EventEmitter:
    """Binds an execution id to a sink so call sites pass only what varies (as in the seed)."""

    def __init__(self, execution_id: str | int, sink: EventSink, *, worker_id: str | None = None):
        #: An integer id stays one on the wire (:class:`~projector.envelope.IntegerId`).
        self.execution_id: str = _id(execution_id)
        self.sink = sink
        self.worker_id = worker_id

    async def emit(
        self,
        event_type: str,
        step: str,
        status: str | None,
        context: Any = None,
        *,
        event_id: str | int | None = None,
        meta: dict[str, Any] | None = None,
    ) -> object:
        """Build an envelope stamped with the current UTC time and emit it."""
        event = ExecutorEvent(
            execution_id=self.execution_id,
            event_id=None if event_id is None else _id(event_id),
            event_type=event_type,
            step=step,
            status=status,
            created_at=datetime.now(UTC),
            context={} if context is None else context,
            worker_id=self.worker_id,
            meta=meta,
        )
        return await self.sink.emit(event)


def _id(value: str | int) -> str:
    """An id as the envelope keeps it: an integer as `IntegerId`, so it is written as one."""
    return value if isinstance(value, str) else IntegerId(value)
