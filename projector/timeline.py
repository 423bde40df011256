"""A Gantt chart of one execution: the model (:class:`Timeline`) and where it is built from.

Everything is read, nothing decided here:

* the execution and its steps are the rows of ``noetl.execution_status`` / ``noetl.step_status``
  (:mod:`projector.readmodel`), the child executions those whose ``parent_execution_id`` names it;
* the **bars** are the status rules' own units. The events of each step (query
  ``timeline.events``: ``noetl.event_class`` picks the step and lifecycle events,
  ``noetl.step_name`` names their step, the order is the fold order) are fed one by one to the
  reference walk of the rules, :class:`projector.fold.StepWalk`, the walk the SQL aggregate
  ``noetl.step_fold`` equals. Every unit the walk opens is one bar: it starts at the event that
  opened it and ends when the walk closes it (its ``finished_at``), or at the end of the drawn
  time while it is open (a cancelled execution's open units end when it did, as
  ``CANCELLED``). The unit's iteration (0-based in the walk, 1-based here) and attempt are the
  walk's, so a retry re-issued with ``meta.attempt = 1`` is still attempt 2, and units named by
  ``meta.loop_iteration_index`` (``noetl.event_iteration``) belong to their iteration. The
  per-step counts the bars give (iterations, attempts) equal the view's; the tests check that;
* a **gap** runs from the end of a failed attempt to the start of the retry of its iteration;
* the **concurrency band** of a step counts its bars open at each instant (the most at once is
  its ``peak``: the 100 parallel iterations of a loop);
* the lifecycle events (``playbook.*``, ``workflow.*``, ...) are **markers**;
* the **stall** is shaded from ``last_progress_at`` to now while the execution is not terminal.

The time axis (:class:`Scale`) runs from the first event to the last one drawn (or the end
event); a
running execution's axis runs on to now, and when the idle time is long next to the activity
(a run stalled for hours after seconds of work) the idle tail is drawn compressed behind a
break, labelled with its length. The renderers are in :mod:`projector.timeline_render`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from psycopg.rows import class_row, scalar_row

from . import readmodel
from .envelope import ExecutorEvent
from .errors import translating
from .fold import COMMAND_OPENER, TERMINAL, StepWalk
from .queries import query
from .readmodel import ExecutionStatus, StepStatus

__all__ = [
    "Bar",
    "Gap",
    "Marker",
    "Scale",
    "StepRow",
    "Timeline",
    "TimelineEvent",
    "build",
    "format_duration",
    "load",
]

#: A tail of idle time longer than this share of the activity is drawn compressed.
_BREAK_RATIO = 0.25
#: The share of the axis a compressed idle tail takes.
_TAIL_SHARE = 0.15


@dataclasses.dataclass(frozen=True)
class TimelineEvent:
    """One row of query ``timeline.events``: a step or lifecycle event, in the fold order."""

    created_at: datetime
    event_id: str
    event_type: str
    status: str | None
    normalized_status: str
    #: ``noetl.step_name(step)`` for a step event; None for a lifecycle event.
    step: str | None
    context: Any
    meta: Any


@dataclasses.dataclass(frozen=True)
class Bar:
    """One attempt of one iteration of a step: one unit of the status rules."""

    iteration: int
    attempt: int
    status: str
    started_at: datetime
    #: When the unit closed; None while it is open (the bar runs to the end of the drawn time).
    finished_at: datetime | None
    error: str | None


@dataclasses.dataclass(frozen=True)
class Gap:
    """The wait between a failed attempt and the retry of the same iteration."""

    iteration: int
    #: The attempt that came after the gap.
    attempt: int
    start: datetime
    end: datetime


@dataclasses.dataclass(frozen=True)
class Marker:
    """A lifecycle event of the execution."""

    at: datetime
    event_type: str
    status: str


@dataclasses.dataclass(frozen=True)
class StepRow:
    """One step: its row of ``noetl.step_status`` and its bars."""

    step: StepStatus
    bars: tuple[Bar, ...]
    gaps: tuple[Gap, ...]
    #: How many bars were open from each instant on (a step function, in time order).
    concurrency: tuple[tuple[datetime, int], ...]
    #: The most bars open at once.
    peak: int

    @property
    def iterations(self) -> int:
        """The iterations the bars belong to (equals ``step.iterations``)."""
        return len({b.iteration for b in self.bars})

    @property
    def attempts(self) -> int:
        """The most tries of one iteration (equals ``step.attempts``)."""
        last: dict[int, int] = {}
        for b in self.bars:
            last[b.iteration] = b.attempt
        return max(last.values(), default=0)


@dataclasses.dataclass(frozen=True)
class Scale:
    """The time axis: `start` to `end` at true scale, then (when `until` is later) the idle
    tail up to `until` compressed into the last :data:`_TAIL_SHARE` of the width."""

    start: datetime
    end: datetime
    until: datetime

    @property
    def broken(self) -> bool:
        """Whether the idle tail is compressed behind a break."""
        return self.until > self.end

    @property
    def true_share(self) -> float:
        """The share of the width at true scale."""
        return 1.0 - _TAIL_SHARE if self.broken else 1.0

    def __call__(self, t: datetime) -> float:
        """Where `t` is, from 0 (start) to 1 (until), clamped."""
        span = (self.end - self.start).total_seconds()
        if t <= self.end or not self.broken:
            x = (t - self.start).total_seconds() / span if span > 0 else 0.0
            return min(max(x, 0.0), 1.0) * self.true_share
        tail = (self.until - self.end).total_seconds()
        return self.true_share + min((t - self.end).total_seconds() / tail, 1.0) * _TAIL_SHARE

    def ticks(self, most: int) -> list[tuple[float, str]]:
        """At most `most` (at least 2) round instants of the true-scale part, as (position,
        label), labels the time since the start (``+0s``, ``+1.5s``, ``+2m``)."""
        span = (self.end - self.start).total_seconds()
        if span <= 0:
            return [(0.0, "+0s")]
        step = _nice_step(span / max(most - 1, 1))
        out = []
        n = 0
        while n * step <= span * (1 + 1e-9):
            t = self.start + timedelta(seconds=n * step)
            out.append((self(t), "+" + format_duration(timedelta(seconds=n * step))))
            n += 1
        return out


def _nice_step(raw: float) -> float:
    """The smallest of 1, 2, 5 x 10^k (and 15 s, 30 s, 10/15/30 min, hours) not below `raw`."""
    for s in (60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 43200.0):
        if raw <= s and raw > 30:
            return s
    if raw > 43200:
        return 86400.0 * math.ceil(raw / 86400.0)
    exp = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exp >= raw:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))  # pragma: no cover


def format_duration(d: timedelta) -> str:
    """A short duration: ``850ms``, ``1.5s``, ``2m05s``, ``3h02m``, ``4d03h``."""
    s = d.total_seconds()
    if s < 1:
        return f"{s * 1000:.0f}ms" if s > 0 else "0s"
    if s < 60:
        return f"{s:.3g}s"
    minutes, secs = divmod(int(s), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


@dataclasses.dataclass(frozen=True)
class Timeline:
    """Everything a timeline draws about one execution."""

    execution: ExecutionStatus
    steps: tuple[StepRow, ...]
    markers: tuple[Marker, ...]
    children: tuple[ExecutionStatus, ...]
    #: The database's clock when the rows were read.
    now: datetime
    scale: Scale

    @property
    def terminal(self) -> bool:
        """Whether the execution is over (its status is terminal)."""
        return self.execution.status in TERMINAL

    @property
    def stall(self) -> tuple[datetime, datetime] | None:
        """The idle time shaded: from the last progress to now, while not terminal."""
        x = self.execution
        if self.terminal or x.last_progress_at is None or self.now <= x.last_progress_at:
            return None
        return (x.last_progress_at, self.now)

    @property
    def idle(self) -> timedelta | None:
        """How long the execution has made no progress (None when it is terminal)."""
        stall = self.stall
        return stall[1] - stall[0] if stall is not None else None

    @property
    def bar_end(self) -> datetime:
        """Where an open bar ends: when a terminal execution ended, else now."""
        x = self.execution
        if self.terminal:
            return x.finished_at or x.last_event_at or self.now
        return self.now

    def jsonable(self) -> dict[str, Any]:
        """The timeline as JSON-ready data (``projector timeline --json``, the web API)."""

        def iso(t: datetime | None) -> str | None:
            return t.isoformat() if t is not None else None

        return {
            "execution": readmodel.jsonable(self.execution),
            "now": iso(self.now),
            "idle_seconds": self.idle.total_seconds() if self.idle is not None else None,
            "markers": [
                {"at": iso(m.at), "event_type": m.event_type, "status": m.status}
                for m in self.markers
            ],
            "steps": [
                {
                    **readmodel.jsonable(r.step),
                    "peak": r.peak,
                    "bars": [
                        {
                            "iteration": b.iteration,
                            "attempt": b.attempt,
                            "status": b.status,
                            "started_at": iso(b.started_at),
                            "finished_at": iso(b.finished_at),
                            "error": b.error,
                        }
                        for b in r.bars
                    ],
                    "gaps": [
                        {"iteration": g.iteration, "attempt": g.attempt}
                        | {"start": iso(g.start), "end": iso(g.end)}
                        for g in r.gaps
                    ],
                }
                for r in self.steps
            ],
            "children": [readmodel.jsonable(c) for c in self.children],
        }


def _as_event(execution_id: str, e: TimelineEvent) -> ExecutorEvent:
    # The stored row as the walk reads it (status, type, time, context, meta); already
    # validated when it was stored, so not validated again (meta may be any JSON in the table).
    return ExecutorEvent.model_construct(
        execution_id=execution_id,
        event_id=e.event_id,
        event_type=e.event_type,
        step=e.step or "",
        status=e.status,
        created_at=e.created_at,
        context=e.context,
        worker_id=None,
        meta=e.meta,
    )


def _step_row(
    step: StepStatus, events: Sequence[TimelineEvent], cancelled_at: datetime | None
) -> StepRow:
    walk = StepWalk(commands=any(e.event_type == COMMAND_OPENER for e in events))
    started: list[datetime] = []
    for e in events:
        walk.feed(_as_event(step.execution_id, e))
        started += [e.created_at] * (len(walk.units) - len(started))
    bars = []
    for u, start in zip(walk.units, started, strict=True):
        status, end = u.status, u.finished_at if not u.open else None
        if u.open and cancelled_at is not None:
            status, end = "CANCELLED", cancelled_at
        elif u.open and status in TERMINAL:
            status = "RUNNING"  # reported done, not closed yet: still open to the rules
        bars.append(Bar(u.iteration + 1, u.attempt, status, start, end, u.error))
    gaps = []
    previous: dict[int, Bar] = {}
    for b in bars:
        before = previous.get(b.iteration)
        if before is not None and before.status == "FAILED" and before.finished_at is not None:
            gaps.append(Gap(b.iteration, b.attempt, before.finished_at, b.started_at))
        previous[b.iteration] = b
    changes: dict[datetime, int] = {}
    for b in bars:
        changes[b.started_at] = changes.get(b.started_at, 0) + 1
        if b.finished_at is not None:
            changes[b.finished_at] = changes.get(b.finished_at, 0) - 1
    level, peak, concurrency = 0, 0, []
    for t in sorted(changes):
        level += changes[t]
        peak = max(peak, level)
        concurrency.append((t, level))
    return StepRow(step, tuple(bars), tuple(gaps), tuple(concurrency), peak)


def _scale(x: ExecutionStatus, events: Sequence[TimelineEvent], now: datetime) -> Scale:
    # What is drawn: the step and lifecycle events, the start and the end (bookkeeping after
    # the last progress, such as checkpoints of a stalled run, is idle time, not activity).
    times = [t for t in (x.started_at, x.finished_at, x.last_progress_at) if t is not None]
    times += [e.created_at for e in (events[0], events[-1])] if events else []
    start = min(times, default=now)
    end = max(times, default=now)
    if x.status in TERMINAL or now <= end:
        return Scale(start, end, end)
    span = max((end - start).total_seconds(), 0.001)
    if (now - end).total_seconds() <= _BREAK_RATIO * span:
        return Scale(start, now, now)
    return Scale(start, end, now)


def build(
    execution: ExecutionStatus,
    steps: Sequence[StepStatus],
    events: Sequence[TimelineEvent],
    children: Sequence[ExecutionStatus],
    now: datetime,
) -> Timeline:
    """The timeline of `execution` from its rows (pure): its steps (``noetl.step_status``),
    its events (query ``timeline.events``, fold order), its child executions and the clock."""
    by_step: dict[str, list[TimelineEvent]] = {}
    markers = []
    for e in events:
        if e.step is None:
            markers.append(Marker(e.created_at, e.event_type, e.normalized_status))
        else:
            by_step.setdefault(e.step, []).append(e)
    cancelled_at = None
    if execution.status == "CANCELLED":
        cancelled_at = execution.finished_at or execution.last_event_at
    rows = tuple(_step_row(s, by_step.get(s.step, []), cancelled_at) for s in steps)
    return Timeline(
        execution=execution,
        steps=rows,
        markers=tuple(markers),
        children=tuple(children),
        now=now,
        scale=_scale(execution, events, now),
    )


@translating()
async def load(conn: readmodel.Conn, execution_id: readmodel.ExecutionId) -> Timeline:
    """Read and build the timeline of one execution (:class:`~projector.errors.UnknownExecution`
    when none of its events is stored). Use an autocommit connection."""
    execution = await readmodel.execution_status(conn, execution_id)
    key = execution.execution_id
    steps = await readmodel.step_statuses(conn, key)
    async with conn.cursor(row_factory=class_row(TimelineEvent)) as cur:
        await cur.execute(query("timeline.events"), (key,))
        events = await cur.fetchall()
    children = await readmodel.children(conn, key)
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(query("timeline.now"))
        now: datetime = (await cur.fetchone()) or datetime.now().astimezone()
    return build(execution, steps, events, children, now)
