"""Group commit for `PostgresEventSink.emit`: many callers, few transactions.

Callers queue their event and wait on a future; each flusher task takes everything queued so far
(up to `batch_size` events), writes it with the sink's write function (one or a few transactions)
and wakes every caller once it is committed: with the outcome, or with the error that concerns
them (`EventConflict`, `InvalidEnvelope`, `DatabaseUnavailable`). Each caller learns its own
outcome: when one of a flush's transactions fails, the callers whose events another one committed
still succeed, and an event the database refuses fails its own caller only (the sink bisects to
it). The queue is bounded, so a slow database slows callers down instead of growing memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from . import batch
from .batch import Outcome, Outcomes, Pending, RejectedItem
from .envelope import ExecutorEvent
from .errors import DatabaseUnavailable, EventConflict, InvalidEnvelope, ProjectorError, translate

__all__ = ["GroupCommit"]

#: Writes prepared events and their rejections, filling in the outcomes; returns once committed.
Write = Callable[[list[Pending], list[RejectedItem], Outcomes], Awaitable[None]]

_Waiting = tuple[ExecutorEvent, asyncio.Future[Outcome]]


class GroupCommit:
    """The queue of `emit` callers and the `flushers` tasks writing it (module docstring). Create
    it in a running event loop; `close` it to write what is queued and stop the flushers."""

    def __init__(self, write: Write, *, batch_size: int, max_pending: int, flushers: int) -> None:
        self._write = write
        self._batch_size = batch_size
        self._queue: asyncio.Queue[_Waiting] = asyncio.Queue(maxsize=max_pending)
        self._flushers = [
            asyncio.create_task(self._flush_loop(), name=f"noetl-sink-flusher-{i}")
            for i in range(flushers)
        ]

    @property
    def queued(self) -> int:
        """Events waiting to be written (at most `max_pending`)."""
        return self._queue.qsize()

    async def emit(self, event: ExecutorEvent) -> Outcome:
        """Queue `event` (waiting while the queue is full) and return its outcome once committed."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        await self._queue.put((event, future))  # waits when the queue is full: backpressure
        return await future

    async def close(self) -> None:
        """Write what callers are waiting for, then stop the flushers."""
        await self._queue.join()
        for task in self._flushers:
            task.cancel()
        await asyncio.gather(*self._flushers, return_exceptions=True)

    async def _flush_loop(self) -> None:
        queue = self._queue
        while True:
            queued = [await queue.get()]
            while len(queued) < self._batch_size and not queue.empty():
                queued.append(queue.get_nowait())
            try:
                await self._flush(queued)
            finally:
                for _ in queued:
                    queue.task_done()

    async def _flush(self, queued: list[_Waiting]) -> None:
        # Validated already, but an envelope built without validation may hold what JSON cannot
        # (it is rejected, as by emit_many, instead of killing the flusher).
        events = [event for event, _ in queued]
        pending: list[Pending] = []
        rejects: list[RejectedItem] = []
        batch.prepare(events, "emit", pending, rejects, offset=None)
        state = Outcomes([None] * len(queued), items=events, source="emit", offset=None)
        for r in rejects:  # known now, whatever happens to the write
            state.reject(r.index, r.reason)
        try:
            await self._write(pending, rejects, state)
        except asyncio.CancelledError:
            _settle(queued, state, DatabaseUnavailable("the sink was closed mid-write"))
            raise
        except Exception as exc:
            # Some transactions of this flush may have committed before another failed: their
            # callers get their outcomes, the others this error.
            _settle(queued, state, translate(exc))
            return
        _settle(queued, state, None)


def _settle(queued: list[_Waiting], state: Outcomes, error: ProjectorError | None) -> None:
    """Give each waiting caller its outcome in `state`; `error` to those whose event was not
    written."""
    for i, (event, future) in enumerate(queued):
        if future.done():  # the caller was cancelled
            continue
        outcome = state.outcomes[i]
        if outcome == "conflict":
            future.set_exception(EventConflict(event.execution_id, event.resolved_event_id()))
        elif outcome == "inserted" or outcome == "duplicate":
            future.set_result(outcome)
        elif outcome == "rejected":
            future.set_exception(InvalidEnvelope(state.reasons.get(i, "not stored")))
        else:
            future.set_exception(error or DatabaseUnavailable("the event was not written"))
