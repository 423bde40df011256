"""The status rules, in plain Python: the reference that the SQL views, tables and functions equal.

Everything here is pure (no I/O). The SQL in migration ``0005_status_rules`` implements the same
rules, and the property-based tests keep the two equal. ``docs/status.md`` states the rules with a
worked example each, taken from a real trace.

Statuses (:func:`normalize_status`)
    Every status the project reports is one of :data:`STATUSES`. A raw status is trimmed (space,
    tab, CR, LF), ASCII-upper-cased and looked up in :data:`STATUS_TABLE`; anything not in the
    table is ``RUNNING``. A missing or empty status comes from the event type (ASCII-lower-cased):
    containing ``error`` or ``fail`` gives ``FAILED``, else ``cancel`` gives ``CANCELLED``, else
    ``skip`` gives ``SKIPPED``, else ``done``, ``exit``, ``complete`` or ``success`` gives
    ``COMPLETED``, else ending in ``.issued``, ``.queued`` or ``.scheduled`` gives ``PENDING``,
    else ``RUNNING``. Terminal: ``COMPLETED``, ``FAILED``, ``CANCELLED``, ``SKIPPED``.

What an event is (:func:`event_class`)
    ``lifecycle``: the execution's own events, ``playbook.*``, ``workflow.*``, ``execution.*`` and
    the Rust server's ``playbook_*``, ``workflow_*``, ``execution_*``, and a subscription
    listener's ``subscription.lifecycle``. They never create a step, whatever their step holds.
    ``bookkeeping``: the engine's machinery, never a step and never progress: events on the nodes
    in :data:`BOOKKEEPING_STEPS` (``events.batch``, ``checkpointer``, ``ingress``), types
    starting with ``checkpoint.`` or ``subscription.``, and heartbeats (``heartbeat``,
    ``*.heartbeat``).
    ``step``: any other event with a step, which belongs to the step :func:`step_name` gives
    (``<step>:task_sequence`` is its parent step's iteration machinery). ``execution``: any other
    event with an empty step (it counts for the execution only).

Order (:func:`order_key`)
    By ``created_at`` (microseconds), then terminal before non-terminal, then ``event_id`` by code
    point (``COLLATE "C"`` in SQL). Never by arrival. Duplicates ``(execution_id, event_id)`` count
    once (the first one seen is kept).

Units, iterations, attempts (:class:`StepWalk`)
    A step's work comes in units. **Command mode** (the step has a ``command.issued`` event): each
    ``command.issued`` opens a unit (a second ``command.issued`` of a known ``meta.command_id`` is
    an event of that unit); ``command.completed`` / ``command.failed`` / ``command.cancelled``
    close the unit of their ``meta.command_id``, or without one the oldest open unit that has none
    (first in, first out); any other event goes to the unit of its ``meta.command_id``, or without
    one to the unit the step's previous event went to. **Otherwise** the step has one unit at a
    time: its first event opens it, a terminal status closes it, and after that an *opener*
    (type ending in one of :data:`OPENER_SUFFIXES`) opens the next one.

    Units belong to iterations. A unit opened with ``meta.loop_iteration_index`` (and
    ``meta.loop_event_id``) belongs to the iteration they name. Otherwise, looking at the unit the
    step's previous event went to (its *latest work*): none yet, or not terminal, or terminal but
    not ``FAILED`` opens a new iteration (a parallel one, or the workflow entering the step again);
    ``FAILED`` makes the new unit a **retry**: the next try of that iteration.

    Attempts count tries: a unit's attempt is 1 in a new iteration, the previous try's plus one in
    a retry. An *explicit attempt* (:func:`explicit_attempt`: ``context.attempt``, else
    ``meta.attempt``, else the Rust worker's 0-based ``meta.attempts`` plus one) only ever raises
    it: on the event opening a unit the attempt is the larger of the two; a later event with a
    higher explicit attempt raises its unit's attempt and, while the unit is open, sets its status
    whatever it was (the start of that attempt; without commands a closed unit is followed by a
    new unit of that attempt). An event with a *lower* explicit attempt than its unit's is a
    straggler of an older attempt and is ignored, unless it names its unit by ``meta.command_id``.
    Attempts stop at :data:`MAX_ATTEMPT` (2**31 - 1): a retry of that attempt is that attempt.

    Within a unit a terminal status is sticky: a later non-terminal one does not replace it (the
    late ``command.completed`` ``RUNNING`` after ``step.exit`` ``COMPLETED``); a later terminal one
    does. A closing event sets the unit's status to its own when that is terminal, else keeps the
    unit's terminal status (unless it starts a higher attempt of the open unit), else takes the
    status its type implies (:data:`COMMAND_CLOSERS`). Closing events follow the attempt rules
    above like any other: an unlabelled one of an older attempt closes nothing.

Step columns (:class:`StepState`)
    An iteration's state is its latest unit's. ``iterations``; ``iterations_running`` (latest unit
    open), ``iterations_completed`` / ``iterations_failed`` (closed with that status);
    ``attempts``: the highest attempt of any iteration's latest unit (100 parallel iterations that
    each succeeded first time: 1). ``status``: while any iteration is running, ``PENDING`` when
    every event of the step is ``PENDING`` (issued, not yet claimed), else ``RUNNING``; once none
    is, ``FAILED`` if an iteration's last try failed (even when others completed later), else
    ``CANCELLED``, ``COMPLETED``, ``SKIPPED`` in that order of precedence. ``finished_at``: while
    terminal, the latest time an iteration's latest unit was closed (or got its terminal status).
    ``error``: while ``FAILED``, the error of the failed iteration that finished first (ties: the
    lower iteration number); a unit's error is that of the event that set ``FAILED`` (see
    :func:`error_text`), and when that event carries none and the unit was ``FAILED`` already, the
    earlier one is kept (the ``step.exit`` ``FAILED`` after the ``call.error`` that says why).
    ``started_at`` / ``last_event_at`` / ``last_event_type`` / ``event_count`` over the step's
    events in the order. When the execution is ``CANCELLED``, every step that is not terminal is
    ``CANCELLED`` (finished when the execution was, no iteration running).

Execution columns (:class:`ExecutionState`)
    ``status``: the status of the last terminal lifecycle event in the order; without one,
    ``PENDING`` when every event that is not bookkeeping is ``PENDING`` (nothing has started),
    else ``RUNNING``: never guessed from the steps. ``finished_at``: that lifecycle event's time.
    ``started_at``, ``last_event_at``, ``event_count`` over all its events; ``last_progress_at``
    over those that are not bookkeeping (null when there are none). ``step_count``,
    ``steps_completed``, ``steps_failed``, ``steps_running`` (not terminal) over its steps;
    ``open_units``: the running iterations of its steps; ``settled``: no step is running.
    ``error``: the deciding lifecycle event's error, else (unless ``COMPLETED``) the error of the
    ``FAILED`` step that finished first (ties: step name by code point). ``parent_execution_id``:
    what its events name as ``context.parent_execution_id``, ``meta.parent_execution_id`` or
    top-level ``parent_execution_id`` (kept in ``meta.unknown_fields``), as text. ``playbook``:
    what its ``playbook.*`` / ``playbook_*`` lifecycle events name as ``context.playbook`` (a
    string), else their step unless that is empty, ``playbook``, ``workflow`` or ``ingress``.
    (Events of one execution name one parent and one playbook; should they disagree, the
    smallest by code point is reported.)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from .envelope import ExecutorEvent

__all__ = [
    "BOOKKEEPING_STEPS",
    "COMMAND_CLOSERS",
    "COMMAND_OPENER",
    "LIFECYCLE_PREFIXES",
    "MAX_ATTEMPT",
    "OPENER_SUFFIXES",
    "STATUSES",
    "STATUS_TABLE",
    "TERMINAL",
    "EventClass",
    "ExecutionState",
    "StepState",
    "StepWalk",
    "command_id",
    "error_text",
    "event_class",
    "explicit_attempt",
    "fold_all",
    "fold_execution",
    "fold_step",
    "is_execution_event",
    "is_terminal",
    "jsonb_text",
    "loop_iteration",
    "normalize_status",
    "order_key",
    "parent_execution_id",
    "status_filter",
    "step_name",
]

STATUSES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "SKIPPED")
TERMINAL: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "SKIPPED"})

#: Raw statuses real producers send (trimmed, ASCII-upper-cased) and what they mean; anything
#: else is RUNNING. The same table is in SQL (`noetl.normalize_status`).
STATUS_TABLE: dict[str, str] = {
    **dict.fromkeys(("PENDING", "QUEUED", "ISSUED", "SCHEDULED", "WAITING", "CREATED"), "PENDING"),
    **dict.fromkeys(
        (
            "RUNNING",
            "STARTED",
            "ENTERED",
            "CLAIMED",
            "INITIALIZED",
            "REGISTERED",
            "ACTIVE",
            "RECEIVED",
            "PROCESSING",
            "IN_PROGRESS",
            "DRAINING",
            "RETRYING",
        ),
        "RUNNING",
    ),
    **dict.fromkeys(
        (
            "COMPLETED",
            "COMPLETE",
            "OK",
            "SUCCESS",
            "SUCCEEDED",
            "SUCCESSFUL",
            "DONE",
            "FINISHED",
            "DEACTIVATED",
        ),
        "COMPLETED",
    ),
    **dict.fromkeys(
        ("FAILED", "FAIL", "FAILURE", "ERROR", "ERRORED", "TIMEOUT", "TIMED_OUT"), "FAILED"
    ),
    **dict.fromkeys(("CANCELLED", "CANCELED", "ABORTED"), "CANCELLED"),
    "SKIPPED": "SKIPPED",
}

LIFECYCLE_PREFIXES = (
    "playbook.",
    "workflow.",
    "execution.",
    "playbook_",
    "workflow_",
    "execution_",
)
LIFECYCLE_TYPES = frozenset({"subscription.lifecycle"})
BOOKKEEPING_STEPS = frozenset({"events.batch", "checkpointer", "ingress"})
BOOKKEEPING_PREFIXES = ("checkpoint.", "subscription.")
TASK_SEQUENCE_SUFFIX = ":task_sequence"

COMMAND_OPENER = "command.issued"
#: Closing events of a command, and the status each implies.
COMMAND_CLOSERS: dict[str, str] = {
    "command.completed": "COMPLETED",
    "command.failed": "FAILED",
    "command.cancelled": "CANCELLED",
}
#: Without commands: event types that open the next unit once the current one is closed.
OPENER_SUFFIXES = (".enter", ".issued", ".scheduled", ".retry", ".retrying", ".restarted")
MAX_ATTEMPT = 2_147_483_647
#: Separates the loop event id from the iteration index in an iteration's key.
_KEY_SEPARATOR = "\x1f"

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
_TO_UPPER = str.maketrans(_LOWER, _UPPER)
_TO_LOWER = str.maketrans(_UPPER, _LOWER)
_TRIM = " \t\r\n"

EventClass = Literal["lifecycle", "bookkeeping", "step", "execution"]


def _status_of_type(event_type: str) -> str:
    t = event_type.translate(_TO_LOWER)
    if "error" in t or "fail" in t:
        return "FAILED"
    if "cancel" in t:
        return "CANCELLED"
    if "skip" in t:
        return "SKIPPED"
    if "done" in t or "exit" in t or "complete" in t or "success" in t:
        return "COMPLETED"
    if t.endswith((".issued", ".queued", ".scheduled")):
        return "PENDING"
    return "RUNNING"


def status_filter(text: str) -> str:
    """The canonical status a filter word names: one of :data:`STATUSES` or a spelling the
    status table reads as one (``failed``, ``ok``, ``error``), any case. Raises ValueError for a
    word the table does not know (in an event such a word means ``RUNNING``; in a filter it is a
    typo)."""
    key = text.strip(_TRIM)
    if not key.isascii() or key.translate(_TO_UPPER) not in STATUS_TABLE:
        raise ValueError(f"{text!r} is not a status: one of {', '.join(STATUSES)}")
    return normalize_status(text, "")


def normalize_status(status: str | None, event_type: str) -> str:
    """The canonical status of one event (module docstring, "Statuses")."""
    s = (status or "").strip(_TRIM).translate(_TO_UPPER)
    if s == "":
        return _status_of_type(event_type)
    return STATUS_TABLE.get(s, "RUNNING")


def is_terminal(status: str | None) -> bool:
    """True for a normalised terminal status."""
    return status in TERMINAL


def is_execution_event(event_type: str) -> bool:
    """True for the execution's lifecycle events (they set its status, never create a step)."""
    return event_type.startswith(LIFECYCLE_PREFIXES) or event_type in LIFECYCLE_TYPES


def step_name(step: str) -> str:
    """The step an event's step field belongs to: ``x:task_sequence`` is step ``x``."""
    if step.endswith(TASK_SEQUENCE_SUFFIX) and len(step) > len(TASK_SEQUENCE_SUFFIX):
        return step[: -len(TASK_SEQUENCE_SUFFIX)]
    return step


def event_class(event_type: str, step: str) -> EventClass:
    """What an event is to the status rules (module docstring, "What an event is")."""
    if is_execution_event(event_type):
        return "lifecycle"
    if (
        step in BOOKKEEPING_STEPS
        or event_type.startswith(BOOKKEEPING_PREFIXES)
        or event_type == "heartbeat"
        or event_type.endswith(".heartbeat")
    ):
        return "bookkeeping"
    return "step" if step != "" else "execution"


def _int_in(value: Any, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def explicit_attempt(context: Any, meta: Any) -> int | None:
    """`context.attempt`, else `meta.attempt` (JSON integers from 1 to 2**31 - 1), else the
    0-based `meta.attempts` (0 to 2**31 - 2) plus one; None when none is present and valid."""
    if isinstance(context, Mapping):
        found = _int_in(context.get("attempt"), 1, MAX_ATTEMPT)
        if found is not None:
            return found
    if isinstance(meta, Mapping):
        found = _int_in(meta.get("attempt"), 1, MAX_ATTEMPT)
        if found is not None:
            return found
        zero_based = _int_in(meta.get("attempts"), 0, MAX_ATTEMPT - 1)
        if zero_based is not None:
            return zero_based + 1
    return None


def _jsonb_key(key: str) -> tuple[int, bytes]:
    raw = key.encode("utf-8")
    return (len(raw), raw)


def jsonb_text(value: Any) -> str:
    """JSON text as PostgreSQL prints a `jsonb` (keys by length then bytes, `", "`, `": "`).

    Floats are printed the way Python prints them, which matches PostgreSQL for the ordinary
    decimal forms (`1.5`, `2.0`) but not for exponents.
    """
    if isinstance(value, Mapping):
        items = sorted(value.items(), key=lambda kv: _jsonb_key(kv[0]))
        return "{" + ", ".join(f"{jsonb_text(k)}: {jsonb_text(v)}" for k, v in items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_text(value: Any) -> str | None:
    """A JSON string as its value, other JSON as jsonb prints it, JSON null (or absent) as None."""
    if value is None:
        return None
    return value if isinstance(value, str) else jsonb_text(value)


def _get(container: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(container, Mapping):
            return None
        container = container.get(key)
    return container


def error_text(context: Any, meta: Any) -> str | None:
    """The error an event carries, from wherever real producers put it: the first non-null of
    `context.error`, `meta.error`, the top-level `error` (kept in `meta.unknown_fields`), and a
    top-level `result`'s `error` or `context.error`."""
    for value in (
        _get(context, "error"),
        _get(meta, "error"),
        _get(meta, "unknown_fields", "error"),
        _get(meta, "unknown_fields", "result", "error"),
        _get(meta, "unknown_fields", "result", "context", "error"),
    ):
        if value is not None:
            return _json_text(value)
    return None


def parent_execution_id(context: Any, meta: Any) -> str | None:
    """`context.parent_execution_id`, else `meta.parent_execution_id`, else the top-level one
    (kept in `meta.unknown_fields`), as text (a JSON string as its value)."""
    for value in (
        _get(context, "parent_execution_id"),
        _get(meta, "parent_execution_id"),
        _get(meta, "unknown_fields", "parent_execution_id"),
    ):
        if value is not None:
            return _json_text(value)
    return None


def command_id(meta: Any) -> str | None:
    """`meta.command_id` as text, or None."""
    return _json_text(_get(meta, "command_id"))


def loop_iteration(meta: Any) -> str | None:
    """The key of the iteration `meta.loop_iteration_index` names (with `meta.loop_event_id`)."""
    index = _json_text(_get(meta, "loop_iteration_index"))
    if index is None:
        return None
    return (_json_text(_get(meta, "loop_event_id")) or "") + _KEY_SEPARATOR + index


def _next(attempt: int) -> int:
    """The attempt after `attempt` (it never passes :data:`MAX_ATTEMPT`: SQL's integer)."""
    return attempt + 1 if attempt < MAX_ATTEMPT else MAX_ATTEMPT


def order_key(event: ExecutorEvent) -> tuple[datetime, int, str]:
    """Sort key of the fold order: created_at, terminal first, event id by code point."""
    terminal = is_terminal(normalize_status(event.status, event.event_type))
    return (event.created_at, 0 if terminal else 1, event.resolved_event_id())


@dataclass(frozen=True)
class StepState:
    """One row of `noetl.step_status` / `noetl.step_state`."""

    execution_id: str
    step: str
    status: str
    attempts: int
    started_at: datetime
    finished_at: datetime | None
    last_event_at: datetime
    last_event_type: str
    event_count: int
    error: str | None
    iterations: int
    iterations_completed: int
    iterations_failed: int
    iterations_running: int


@dataclass(frozen=True)
class ExecutionState:
    """One row of `noetl.execution_status` / `noetl.execution_state`."""

    execution_id: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    last_event_at: datetime
    event_count: int
    step_count: int
    steps_completed: int
    steps_failed: int
    steps_running: int
    error: str | None
    parent_execution_id: str | None
    playbook: str | None
    last_progress_at: datetime | None
    open_units: int
    settled: bool


@dataclass
class _Unit:
    """One command (or, without commands, one stretch of a step's work up to a terminal status)."""

    command_id: str | None
    iteration: int  # 0-based index into StepWalk.iterations
    attempt: int
    status: str
    open: bool
    error: str | None
    finished_at: datetime | None


@dataclass
class StepWalk:
    """The walk over one step's events in the fold order (module docstring, "Units...").

    `commands` says whether the step has a ``command.issued`` event anywhere (command mode).
    Feed every event of the step in :func:`order_key` order with :meth:`feed`, then read
    :meth:`result`. The SQL aggregate ``noetl.step_fold`` is the same walk.
    """

    commands: bool
    units: list[_Unit] = field(default_factory=list)
    #: Per iteration, the index of its latest unit.
    iterations: list[int] = field(default_factory=list)
    #: Iterations named by `meta.loop_iteration_index`: key -> iteration index.
    iteration_keys: dict[str, int] = field(default_factory=dict)
    #: The unit the previous event went to (the step's latest work).
    latest: int | None = None
    all_pending: bool = True

    def _open_unit(
        self,
        ev: ExecutorEvent,
        status: str,
        attempt: int,
        iteration: int | None,
        cid: str | None,
        error: str | None,
        closed: bool,
    ) -> None:
        if iteration is None:
            iteration = len(self.iterations)
            self.iterations.append(len(self.units))
        else:
            self.iterations[iteration] = len(self.units)
        self.units.append(
            _Unit(
                command_id=cid,
                iteration=iteration,
                attempt=attempt,
                status=status,
                open=not closed,
                error=error if status == "FAILED" else None,
                finished_at=ev.created_at if is_terminal(status) else None,
            )
        )
        self.latest = len(self.units) - 1

    @staticmethod
    def _set(u: _Unit, ev: ExecutorEvent, status: str, error: str | None, opens: bool) -> None:
        """Give unit `u` the status `status` (stickiness already decided by the caller)."""
        if status == "FAILED":
            u.error = error if error is not None or opens or u.status != "FAILED" else u.error
        else:
            u.error = None
        u.status = status
        u.finished_at = ev.created_at if is_terminal(status) else None

    def _unit_of(self, cid: str) -> int | None:
        for i, u in enumerate(self.units):
            if u.command_id == cid:
                return i
        return None

    def feed(self, ev: ExecutorEvent) -> None:
        """Take the next event of the step (in the fold order)."""
        status = normalize_status(ev.status, ev.event_type)
        if status != "PENDING":
            self.all_pending = False
        k = explicit_attempt(ev.context, ev.meta)
        # Only an event that can make its unit FAILED needs its error.
        failing = status == "FAILED" or ev.event_type == "command.failed"
        error = error_text(ev.context, ev.meta) if failing else None
        if self.commands:
            self._feed_command(ev, status, k, error)
        else:
            self._feed_plain(ev, status, k, error)

    def _feed_command(
        self, ev: ExecutorEvent, status: str, k: int | None, error: str | None
    ) -> None:
        cid = command_id(ev.meta)
        known = self._unit_of(cid) if cid is not None else None
        t = ev.event_type
        if t == COMMAND_OPENER and known is None:
            key = loop_iteration(ev.meta)
            iteration: int | None = None
            attempt = 1
            if key is not None and key in self.iteration_keys:
                iteration = self.iteration_keys[key]
                attempt = _next(self.units[self.iterations[iteration]].attempt)
            elif key is None and self.latest is not None:
                previous = self.units[self.latest]
                if previous.status == "FAILED":  # a retry of that iteration
                    iteration = previous.iteration
                    attempt = _next(self.units[self.iterations[iteration]].attempt)
            if k is not None and k > attempt:
                attempt = k
            self._open_unit(ev, status, attempt, iteration, cid, error, closed=False)
            if key is not None and iteration is None:
                self.iteration_keys[key] = len(self.iterations) - 1
            return
        if t in COMMAND_CLOSERS:
            target = known
            if cid is None:
                target = next(
                    (i for i, u in enumerate(self.units) if u.open and u.command_id is None),
                    self.latest,
                )
            if target is None:
                return  # closes nothing this walk knows
            u = self.units[target]
            if k is not None and k < u.attempt and cid is None:
                return  # a straggler of an older attempt
            fresh = False  # the closer starts a higher attempt of an open unit
            if k is not None and k > u.attempt:
                u.attempt = k
                fresh = u.open
            if is_terminal(status):
                closing = status
            elif is_terminal(u.status) and not fresh:
                closing = u.status
            else:
                closing = COMMAND_CLOSERS[t]
            if closing == "FAILED":
                keep = error is None and not fresh and u.status == "FAILED"
                u.error = u.error if keep else error
            else:
                u.error = None
            u.status = closing
            u.open = False
            u.finished_at = ev.created_at
            self.latest = target
            return
        target = known if cid is not None else self.latest
        if target is None:
            return  # before the first command, or a command this walk never saw issued
        u = self.units[target]
        if k is not None and k < u.attempt and cid is None:
            return  # a straggler of an older attempt
        if k is not None and k > u.attempt:
            u.attempt = k
            if u.open:
                self._set(u, ev, status, error, opens=True)
                self.latest = target
                return
        if not (is_terminal(u.status) and not is_terminal(status)):
            self._set(u, ev, status, error, opens=False)
        self.latest = target

    def _feed_plain(self, ev: ExecutorEvent, status: str, k: int | None, error: str | None) -> None:
        closes = is_terminal(status)
        if not self.units:
            self._open_unit(ev, status, k or 1, None, None, error, closed=closes)
            return
        u = self.units[-1]
        if k is not None and k < u.attempt:
            return  # a straggler of an older attempt
        if k is not None and k > u.attempt:
            if u.open:
                u.attempt = k
                self._set(u, ev, status, error, opens=True)
                u.open = not closes
            else:
                self._open_unit(ev, status, k, u.iteration, None, error, closed=closes)
            return
        if not u.open and ev.event_type.endswith(OPENER_SUFFIXES):
            if u.status == "FAILED":  # a retry: the next try of the same iteration
                self._open_unit(ev, status, _next(u.attempt), u.iteration, None, error, closes)
            else:  # the workflow entering the step again
                self._open_unit(ev, status, k or 1, None, None, error, closes)
            return
        if is_terminal(u.status) and not closes:
            return  # a terminal status is sticky within its unit
        self._set(u, ev, status, error, opens=False)
        u.open = not closes

    def result(self) -> tuple[str, int, datetime | None, str | None, int, int, int, int]:
        """``(status, attempts, finished_at, error, iterations, completed, failed, running)``."""
        latest = [self.units[i] for i in self.iterations]
        running = sum(1 for u in latest if u.open)
        completed = sum(1 for u in latest if not u.open and u.status == "COMPLETED")
        failed_units = [(u.finished_at, n, u) for n, u in enumerate(latest) if not u.open]
        failed = [x for x in failed_units if x[2].status == "FAILED"]
        attempts = max((u.attempt for u in latest), default=0)
        counts = (len(latest), completed, len(failed), running)
        if running or not latest:
            return ("PENDING" if self.all_pending else "RUNNING", attempts, None, None, *counts)
        finished = max(u.finished_at for u in latest if u.finished_at is not None)
        if failed:
            first = min(failed, key=lambda x: (x[0], x[1]))
            return ("FAILED", attempts, finished, first[2].error, *counts)
        closed = {u.status for u in latest}
        for status in ("CANCELLED", "COMPLETED", "SKIPPED"):
            if status in closed:
                return (status, attempts, finished, None, *counts)
        raise AssertionError(f"closed units with statuses {closed}")  # pragma: no cover


def _dedupe(events: Iterable[ExecutorEvent]) -> list[ExecutorEvent]:
    seen: set[tuple[str, str]] = set()
    out = []
    for ev in events:
        key = (ev.execution_id, ev.resolved_event_id())
        if key not in seen:
            seen.add(key)
            out.append(ev)
    return out


def fold_step(events: Iterable[ExecutorEvent]) -> StepState:
    """Fold the events of one step (any order, duplicates allowed) into its state, as it is
    before the rule for cancelled executions (which :func:`fold_all` applies)."""
    ordered = sorted(_dedupe(events), key=order_key)
    if not ordered:
        raise ValueError("fold_step needs at least one event")
    walk = StepWalk(commands=any(ev.event_type == COMMAND_OPENER for ev in ordered))
    for ev in ordered:
        walk.feed(ev)
    status, attempts, finished_at, error, iterations, completed, failed, running = walk.result()
    first, last = ordered[0], ordered[-1]
    return StepState(
        execution_id=first.execution_id,
        step=step_name(first.step),
        status=status,
        attempts=attempts,
        started_at=first.created_at,
        finished_at=finished_at,
        last_event_at=last.created_at,
        last_event_type=last.event_type,
        event_count=len(ordered),
        error=error,
        iterations=iterations,
        iterations_completed=completed,
        iterations_failed=failed,
        iterations_running=running,
    )


def _playbook(ev: ExecutorEvent) -> str | None:
    if not ev.event_type.startswith(("playbook.", "playbook_")):
        return None
    named = _get(ev.context, "playbook")
    if isinstance(named, str):
        return named
    return ev.step if ev.step not in ("", "playbook", "workflow", "ingress") else None


def _smallest(values: Iterable[str | None]) -> str | None:
    """The smallest non-null value by code point (SQL's ``min(x COLLATE "C")``)."""
    present = [v for v in values if v is not None]
    return min(present, key=lambda v: v.encode("utf-8")) if present else None


def _steps_of(events: Iterable[ExecutorEvent]) -> dict[str, list[ExecutorEvent]]:
    by_step: dict[str, list[ExecutorEvent]] = {}
    for ev in events:
        if event_class(ev.event_type, step_name(ev.step)) == "step":
            by_step.setdefault(step_name(ev.step), []).append(ev)
    return by_step


def _fold_execution(
    events: list[ExecutorEvent], steps: list[StepState]
) -> tuple[ExecutionState, list[StepState]]:
    """The execution of `events` (deduplicated) and its `steps` after the execution-level rules."""
    ordered = sorted(events, key=order_key)
    decider: ExecutorEvent | None = None
    work: list[ExecutorEvent] = []
    for ev in ordered:
        kind = event_class(ev.event_type, step_name(ev.step))
        if kind != "bookkeeping":
            work.append(ev)
        if kind == "lifecycle" and is_terminal(normalize_status(ev.status, ev.event_type)):
            decider = ev
    if decider is not None:
        status = normalize_status(decider.status, decider.event_type)
    elif all(normalize_status(ev.status, ev.event_type) == "PENDING" for ev in work):
        status = "PENDING"
    else:
        status = "RUNNING"
    finished_at = decider.created_at if decider is not None else None
    if status == "CANCELLED":
        steps = [
            s
            if is_terminal(s.status)
            else replace(s, status="CANCELLED", finished_at=finished_at, iterations_running=0)
            for s in steps
        ]
    error = error_text(decider.context, decider.meta) if decider is not None else None
    if error is None and status != "COMPLETED":
        failed = [s for s in steps if s.status == "FAILED"]
        if failed:
            error = min(failed, key=lambda s: (s.finished_at, s.step.encode("utf-8"))).error
    state = ExecutionState(
        execution_id=ordered[0].execution_id,
        status=status,
        started_at=ordered[0].created_at,
        finished_at=finished_at,
        last_event_at=ordered[-1].created_at,
        event_count=len(ordered),
        step_count=len(steps),
        steps_completed=sum(1 for s in steps if s.status == "COMPLETED"),
        steps_failed=sum(1 for s in steps if s.status == "FAILED"),
        steps_running=sum(1 for s in steps if not is_terminal(s.status)),
        error=error,
        parent_execution_id=_smallest(parent_execution_id(ev.context, ev.meta) for ev in ordered),
        playbook=_smallest(_playbook(ev) for ev in ordered),
        last_progress_at=work[-1].created_at if work else None,
        open_units=sum(s.iterations_running for s in steps),
        settled=all(is_terminal(s.status) for s in steps),
    )
    return state, steps


def fold_execution(events: Iterable[ExecutorEvent]) -> ExecutionState:
    """Fold all events of one execution (any order, duplicates allowed) into its state."""
    unique = _dedupe(events)
    if not unique:
        raise ValueError("fold_execution needs at least one event")
    steps = [fold_step(evs) for evs in _steps_of(unique).values()]
    return _fold_execution(unique, steps)[0]


def fold_all(
    events: Iterable[ExecutorEvent],
) -> tuple[dict[tuple[str, str], StepState], dict[str, ExecutionState]]:
    """Fold a whole event log: step states by (execution_id, step), executions by id."""
    by_exec: dict[str, list[ExecutorEvent]] = {}
    for ev in _dedupe(events):
        by_exec.setdefault(ev.execution_id, []).append(ev)
    steps: dict[tuple[str, str], StepState] = {}
    executions: dict[str, ExecutionState] = {}
    for execution_id, evs in by_exec.items():
        folded = [fold_step(s) for s in _steps_of(evs).values()]
        state, final_steps = _fold_execution(evs, folded)
        for st in final_steps:
            steps[(execution_id, st.step)] = st
        executions[execution_id] = state
    return steps, executions
