"""Group commit for `PostgresEventSink.emit`: many callers, few transactions.

Callers queue their event and wait on a future; each flusher task takes everything queued so far
(up to `batch_size` events), writes it with the sink's write function (one or a few transactions)
and wakes every caller once it is committed: with the outcome, or with the error that concerns
them (`EventConflict`, `InvalidEnvelope`, `DatabaseUnavailable`). Each caller learns its own
outcome: when one of a flush's transactions fails, the callers whose events another one committed
still succeed, and an event the database refuses fails its own caller only (the sink bisects to
it). The queue is bounded, so a slow database slows callers down instead of growing memory.

The queue is a deque with its own waiters rather than an `asyncio.Queue`: a caller that finds
room pays for one future and an append (no coroutine of its own, no task accounting), a flusher
takes its whole batch in one step, and callers waiting for room have their events queued in the
order they came, as many as the flusher's batch freed (a new caller waits behind them).
"""

from __future__ import annotations

import asyncio
from collections import deque
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
        self._max_pending = max_pending
        self._loop = asyncio.get_running_loop()
        self._queue: deque[_Waiting] = deque()
        #: Flushers waiting for an event, each on its own future.
        self._idle: deque[asyncio.Future[None]] = deque()
        #: Callers waiting for room in the queue, in arrival order, with their futures.
        self._blocked: deque[_Waiting] = deque()
        self._unfinished = 0  # events queued or being written
        self._drained: asyncio.Future[None] | None = None  # what `close` waits on
        self._flushers = [
            asyncio.create_task(self._flush_loop(), name=f"noetl-sink-flusher-{i}")
            for i in range(flushers)
        ]

    @property
    def queued(self) -> int:
        """Events waiting to be written (at most `max_pending`)."""
        return len(self._queue)

    def emit(self, event: ExecutorEvent) -> asyncio.Future[Outcome]:
        """Queue `event`; the future of its outcome, set once it is committed. With the queue
        full (or callers already waiting for room) the event waits for room first, behind the
        callers already waiting (backpressure: the caller awaits a future that is set later).
        Cancelling the future before the event is let in withdraws it; once queued it is
        written whatever its caller does."""
        future: asyncio.Future[Outcome] = self._loop.create_future()
        if self._blocked or len(self._queue) >= self._max_pending:
            self._blocked.append((event, future))
            self._admit()  # at once if there is room (the callers ahead may have been cancelled)
        else:
            self._append(event, future)
        return future

    def _append(self, event: ExecutorEvent, future: asyncio.Future[Outcome]) -> None:
        self._queue.append((event, future))
        self._unfinished += 1
        idle = self._idle
        while idle:  # wake one waiting flusher (a flusher cancelled by close is skipped)
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break

    def _admit(self) -> None:
        """Queue as many waiting callers' events as there is room for, in arrival order."""
        blocked, queue = self._blocked, self._queue
        while blocked and len(queue) < self._max_pending:
            event, future = blocked.popleft()
            if not future.done():  # else its caller was cancelled while it waited
                self._append(event, future)

    def _wake_closer(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    async def close(self) -> None:
        """Write what callers are waiting for, then stop the flushers."""
        while self._unfinished or any(not f.done() for _, f in self._blocked):
            if self._drained is None or self._drained.done():  # several closers share it
                self._drained = self._loop.create_future()
            await asyncio.shield(self._drained)  # a cancelled closer leaves it to the others
        for task in self._flushers:
            task.cancel()
        await asyncio.gather(*self._flushers, return_exceptions=True)

    async def _flush_loop(self) -> None:
        queue, batch_size = self._queue, self._batch_size
        while True:
            if not queue:
                waiter: asyncio.Future[None] = self._loop.create_future()
                self._idle.append(waiter)
                await waiter
                continue
            if len(queue) <= batch_size:  # the usual case: everything queued, in one step
                queued = list(queue)
                queue.clear()
            else:
                queued = [queue.popleft() for _ in range(batch_size)]
            if self._blocked:
                self._admit()
            try:
                await self._flush(queued)
            finally:
                self._unfinished -= len(queued)
                if not self._unfinished:
                    self._wake_closer()

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
    outcomes = state.outcomes
    for i, (event, future) in enumerate(queued):
        if future.done():  # the caller was cancelled
            continue
        outcome = outcomes[i]
        if outcome == "inserted" or outcome == "duplicate":
            future.set_result(outcome)
        elif outcome == "conflict":
            future.set_exception(EventConflict(event.execution_id, event.resolved_event_id()))
        elif outcome == "rejected":
            future.set_exception(InvalidEnvelope(state.reasons.get(i, "not stored")))
        else:
            future.set_exception(error or DatabaseUnavailable("the event was not written"))
