"""GroupCommit without a database: outcomes per caller, the queue's bound, admission, close."""

from __future__ import annotations

import asyncio

import pytest

from projector import DatabaseUnavailable, EventConflict, InvalidEnvelope, ProjectorError
from projector.batch import Outcomes, Pending, RejectedItem
from projector.groupcommit import GroupCommit
from tests.factories import event, events


class FakeWrite:
    """A write function that records its batches and waits for `release` before committing."""

    def __init__(self, *, hold: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail: Exception | None = None
        self.outcome: dict[str, str] = {}  # event id -> outcome other than "inserted"

    async def __call__(
        self, pending: list[Pending], rejects: list[RejectedItem], state: Outcomes
    ) -> None:
        self.batches.append([p.key[1] for p in pending])
        await self.release.wait()
        for p in pending:
            outcome = self.outcome.get(p.key[1], "inserted")
            if outcome == "unwritten":
                continue
            if outcome == "rejected":
                state.reject(p.index, "refused")
            else:
                state.outcomes[p.index] = outcome  # type: ignore[assignment]
        if self.fail is not None:
            raise self.fail


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_each_caller_gets_its_own_outcome() -> None:
    write = FakeWrite()
    write.outcome = {"1": "duplicate", "2": "conflict", "3": "rejected"}
    group = GroupCommit(write, batch_size=100, max_pending=100, flushers=2)
    batch = events(5)
    outcomes = await asyncio.gather(*(group.emit(e) for e in batch), return_exceptions=True)
    await group.close()
    assert outcomes[0] == "inserted" and outcomes[1] == "duplicate" and outcomes[4] == "inserted"
    assert isinstance(outcomes[2], EventConflict)
    assert isinstance(outcomes[3], InvalidEnvelope) and "refused" in str(outcomes[3])
    assert write.batches == [["0", "1", "2", "3", "4"]]  # one flush took everything queued


async def test_a_failed_write_fails_only_the_unwritten() -> None:
    write = FakeWrite()
    write.outcome = {"1": "unwritten"}
    write.fail = OSError("connection lost")
    group = GroupCommit(write, batch_size=100, max_pending=100, flushers=1)
    outcomes = await asyncio.gather(*(group.emit(e) for e in events(3)), return_exceptions=True)
    await group.close()
    assert outcomes[0] == "inserted" and outcomes[2] == "inserted"
    assert isinstance(outcomes[1], ProjectorError) and "connection lost" in str(outcomes[1])


async def test_batches_are_cut_at_batch_size() -> None:
    write = FakeWrite()
    group = GroupCommit(write, batch_size=2, max_pending=100, flushers=1)
    assert await asyncio.gather(*(group.emit(e) for e in events(5))) == ["inserted"] * 5
    await group.close()
    assert [len(b) for b in write.batches] == [2, 2, 1]


async def test_the_queue_is_bounded_and_waiting_callers_enter_in_order() -> None:
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=2, max_pending=3, flushers=1)
    batch = events(9)
    tasks = [asyncio.create_task(_emit(group, e)) for e in batch]
    await settle()
    # One flush of 2 in flight (held), 3 queued, 4 callers waiting for room.
    assert write.batches == [["0", "1"]]
    assert group.queued == 3
    write.release.set()
    assert await asyncio.gather(*tasks) == ["inserted"] * 9
    await group.close()
    assert [k for b in write.batches for k in b] == [str(i) for i in range(9)]  # FIFO
    assert max(len(b) for b in write.batches) <= 2


async def test_queued_never_exceeds_max_pending() -> None:
    write = FakeWrite()
    group = GroupCommit(write, batch_size=4, max_pending=5, flushers=2)
    seen: list[int] = []
    inner = write.__call__

    async def watched(*args: object) -> None:
        seen.append(group.queued)  # while a flush is written
        await inner(*args)  # type: ignore[arg-type]

    group._write = watched
    futures = [group.emit(e) for e in events(200)]
    assert group.queued == 5  # the rest wait for room
    assert await asyncio.gather(*futures) == ["inserted"] * 200
    await group.close()
    assert seen and max(seen) <= 5


async def test_a_cancelled_waiting_caller_does_not_hold_up_the_others() -> None:
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=1, max_pending=1, flushers=1)
    first = asyncio.create_task(_emit(group, event("x", "1")))
    await settle()  # in flight
    queued = asyncio.create_task(_emit(group, event("x", "2")))
    await settle()  # queued: the queue is full
    waiting = [asyncio.create_task(_emit(group, event("x", str(i)))) for i in (3, 4)]
    await settle()
    waiting[0].cancel()
    await settle()
    write.release.set()
    assert await first == "inserted" and await queued == "inserted"
    assert await waiting[1] == "inserted"
    with pytest.raises(asyncio.CancelledError):
        await waiting[0]
    await group.close()
    assert write.batches == [["1"], ["2"], ["4"]]


async def test_close_writes_what_is_queued_and_what_waits_for_room() -> None:
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=2, max_pending=2, flushers=1)
    tasks = [asyncio.create_task(_emit(group, e)) for e in events(7)]
    await settle()
    closing = asyncio.create_task(group.close())
    await settle()
    assert not closing.done()
    write.release.set()
    await closing
    assert all(t.done() and t.result() == "inserted" for t in tasks)
    assert sum(len(b) for b in write.batches) == 7


async def test_close_mid_write_fails_its_callers() -> None:
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=10, max_pending=10, flushers=1)
    task = asyncio.create_task(_emit(group, event()))
    await settle()
    for flusher in group._flushers:
        flusher.cancel()
    with pytest.raises(DatabaseUnavailable, match="closed mid-write"):
        await task


async def _emit(group: GroupCommit, e: object) -> str:
    return await group.emit(e)  # type: ignore[arg-type]


async def test_callers_waiting_for_room_keep_their_order() -> None:
    # A caller let in after waiting is queued before anyone who comes later, even a caller that
    # finds room once the flusher freed some (the first occurrence of a key in a flush is the one
    # written).
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=3, max_pending=3, flushers=1)

    async def producer_a() -> None:
        assert await group.emit(event("x", "0")) == "inserted"
        assert await group.emit(event("x", "5")) == "inserted"

    a = asyncio.create_task(producer_a())
    await settle()  # "0" in flight
    fill = [asyncio.create_task(_emit(group, event("x", str(i)))) for i in (1, 2, 3)]
    await settle()  # the queue is full
    b = asyncio.create_task(_emit(group, event("x", "4")))
    await settle()  # waiting for room
    write.release.set()
    await asyncio.gather(a, b, *fill)
    await group.close()
    assert [k for b in write.batches for k in b] == ["0", "1", "2", "3", "4", "5"]


async def test_two_closers_both_return() -> None:
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=10, max_pending=10, flushers=1)
    task = asyncio.create_task(_emit(group, event()))
    await settle()
    closers = [asyncio.create_task(group.close()) for _ in range(2)]
    await settle()
    closers[0].cancel()  # a closer that gives up leaves the other waiting, not failing
    await settle()
    assert not closers[1].done()
    write.release.set()
    assert await task == "inserted"
    await asyncio.wait_for(closers[1], timeout=10)
    with pytest.raises(asyncio.CancelledError):
        await closers[0]
    third = GroupCommit(FakeWrite(hold=False), batch_size=1, max_pending=1, flushers=1)
    both = [asyncio.create_task(third.close()) for _ in range(2)]
    await asyncio.wait_for(asyncio.gather(*both), timeout=10)


async def test_emit_always_returns_a_future() -> None:
    write = FakeWrite(hold=True)
    group = GroupCommit(write, batch_size=1, max_pending=1, flushers=1)
    futures = [group.emit(event("x", str(i))) for i in range(3)]  # room, full, waiting
    assert all(isinstance(f, asyncio.Future) for f in futures)
    write.release.set()
    assert await asyncio.gather(*futures) == ["inserted"] * 3
    await group.close()
