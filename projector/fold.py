"""The status rules, in plain Python: the reference the SQL views and tables must equal.

Everything here is pure (no I/O). The SQL in migration ``0002_status`` implements the same rules
and the property-based tests keep the two equal. The rules:

Normalising a status (:func:`normalize_status`)
    Trim spaces, tabs, CR and LF, upper-case ASCII letters (only ASCII, so Python and PostgreSQL
    agree whatever the database locale). ``OK``, ``SUCCESS``, ``SUCCEEDED``, ``DONE`` become
    ``COMPLETED``; ``ERROR``, ``FAILURE`` become ``FAILED``; ``CANCELED`` becomes ``CANCELLED``;
    ``STARTED`` becomes ``RUNNING``. A missing or empty status comes from the event type
    (ASCII-lower-cased): containing ``error`` or ``failed`` gives ``FAILED``, else containing
    ``done``, ``exit`` or ``completed`` gives ``COMPLETED``, else ``RUNNING``. Anything else stays
    as it is (upper-cased).

Terminal statuses
    ``COMPLETED``, ``FAILED``, ``CANCELLED``, ``SKIPPED``.

Execution-level events (:func:`is_execution_event`)
    Event types starting with ``playbook.``, ``workflow.`` or ``execution.``. They set the
    execution's status and never create a step. Every other event with a non-empty ``step``
    belongs to the step ``(execution_id, step)``; other events with an empty step only count
    towards the execution's ``event_count``, ``started_at`` and ``last_event_at``.

Order (:func:`order_key`)
    By ``created_at`` (microseconds), then terminal before non-terminal, then ``event_id`` by code
    point (``COLLATE "C"`` in SQL). Never by arrival. Duplicates ``(execution_id, event_id)``
    count once (the first one seen is kept).

Attempts (:func:`explicit_attempt`, :func:`fold_step`)
    ``context.attempt`` (when the context is an object), else ``meta.attempt``, when it is a JSON
    integer from 1 to 2147483647, is the event's explicit attempt. See :func:`fold_step`.

Step columns
    ``status`` and ``attempts`` from the walk; ``started_at`` the first ``created_at``;
    ``finished_at`` the ``created_at`` of the event that set the current terminal status (null
    while non-terminal); ``last_event_at`` / ``last_event_type`` of the last event in the order;
    ``event_count``; ``error``: while the status is ``FAILED``, the non-null ``error`` value of the
    context (when an object) else of the meta, of the event that set the status, as text (a JSON
    string as its value, anything else as PostgreSQL's ``jsonb`` text); else null.

Execution columns
    ``status``: the status of the last terminal execution-level event in the order, ``RUNNING``
    when there is none (also for executions that have only step events); ``finished_at`` the
    ``created_at`` of that event; ``started_at``, ``last_event_at``, ``event_count`` over all the
    execution's events; ``step_count``, ``steps_completed`` (``COMPLETED``), ``steps_failed``
    (``FAILED``), ``steps_running`` (non-terminal) over its steps. ``CANCELLED`` and ``SKIPPED``
    steps count only in ``step_count``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .envelope import ExecutorEvent

__all__ = [
    "EXECUTION_PREFIXES",
    "MAX_ATTEMPT",
    "OPENER_SUFFIXES",
    "TERMINAL",
    "ExecutionState",
    "StepState",
    "error_text",
    "explicit_attempt",
    "fold_all",
    "fold_execution",
    "fold_step",
    "is_execution_event",
    "is_terminal",
    "jsonb_text",
    "normalize_status",
    "order_key",
]

TERMINAL: frozenset[str] = frozenset({"COMPLETED", "FAILED", "CANCELLED", "SKIPPED"})
EXECUTION_PREFIXES = ("playbook.", "workflow.", "execution.")
#: Event types that open a new attempt when they arrive after a terminal status.
OPENER_SUFFIXES = (".enter", ".issued", ".scheduled", ".retry", ".retrying", ".restarted")
MAX_ATTEMPT = 2_147_483_647

_ALIASES = {
    "OK": "COMPLETED",
    "SUCCESS": "COMPLETED",
    "SUCCEEDED": "COMPLETED",
    "DONE": "COMPLETED",
    "ERROR": "FAILED",
    "FAILURE": "FAILED",
    "CANCELED": "CANCELLED",
    "STARTED": "RUNNING",
}
_LOWER = "abcdefghijklmnopqrstuvwxyz"
_UPPER = _LOWER.upper()
_TO_UPPER = str.maketrans(_LOWER, _UPPER)
_TO_LOWER = str.maketrans(_UPPER, _LOWER)
_TRIM = " \t\r\n"


def normalize_status(status: str | None, event_type: str) -> str:
    """The canonical status of one event (module docstring, "Normalising a status")."""
    s = (status or "").strip(_TRIM).translate(_TO_UPPER)
    if s == "":
        t = event_type.translate(_TO_LOWER)
        if "error" in t or "failed" in t:
            return "FAILED"
        if "done" in t or "exit" in t or "completed" in t:
            return "COMPLETED"
        return "RUNNING"
    return _ALIASES.get(s, s)


def is_terminal(status: str | None) -> bool:
    """True for a normalised terminal status."""
    return status in TERMINAL


def is_execution_event(event_type: str) -> bool:
    """True when the event belongs to the execution as a whole, not to a step."""
    return event_type.startswith(EXECUTION_PREFIXES)


def _attempt_of(container: Any) -> int | None:
    if not isinstance(container, Mapping):
        return None
    value = container.get("attempt")
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ATTEMPT:
        return value
    return None


def explicit_attempt(context: Any, meta: Any) -> int | None:
    """`context.attempt`, else `meta.attempt`, when it is an integer from 1 to 2**31 - 1."""
    found = _attempt_of(context)
    return found if found is not None else _attempt_of(meta)


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


def error_text(context: Any, meta: Any) -> str | None:
    """The `error` of an event: context's non-null `error` (context an object), else meta's."""
    for container in (context, meta):
        if isinstance(container, Mapping):
            value = container.get("error")
            if value is not None:
                return value if isinstance(value, str) else jsonb_text(value)
    return None


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
    """Fold the events of one step (any order, duplicates allowed) into its state.

    Walking the events in :func:`order_key` order with current attempt ``a`` (0 at first):

    * explicit attempt ``k > a``: attempt ``k`` opens and the event sets the status;
    * explicit ``k < a``: a straggler from an older attempt, ignored for the status;
    * no explicit attempt: the first event opens attempt 1; an event whose type ends in one of
      :data:`OPENER_SUFFIXES` arriving while the status is terminal opens attempt ``a + 1``;
    * otherwise (same attempt): a terminal status is sticky against non-terminal ones, a later
      terminal status replaces an earlier one, a non-terminal status replaces a non-terminal one.

    Every event, ignored or not, counts in `event_count`, `last_event_at` and `last_event_type`.
    """
    ordered = sorted(_dedupe(events), key=order_key)
    if not ordered:
        raise ValueError("fold_step needs at least one event")
    attempt = 0
    status = ""
    setter: ExecutorEvent | None = None
    for ev in ordered:
        s = normalize_status(ev.status, ev.event_type)
        k = explicit_attempt(ev.context, ev.meta)
        if k is not None and k > attempt:
            attempt, status, setter = k, s, ev
        elif k is not None and k < attempt:
            continue
        elif k is None and attempt == 0:
            attempt, status, setter = 1, s, ev
        elif k is None and is_terminal(status) and ev.event_type.endswith(OPENER_SUFFIXES):
            attempt, status, setter = attempt + 1, s, ev
        elif not is_terminal(status) or is_terminal(s):
            status, setter = s, ev
    assert setter is not None
    first, last = ordered[0], ordered[-1]
    return StepState(
        execution_id=first.execution_id,
        step=first.step,
        status=status,
        attempts=attempt,
        started_at=first.created_at,
        finished_at=setter.created_at if is_terminal(status) else None,
        last_event_at=last.created_at,
        last_event_type=last.event_type,
        event_count=len(ordered),
        error=error_text(setter.context, setter.meta) if status == "FAILED" else None,
    )


def _belongs_to_step(event: ExecutorEvent) -> bool:
    return event.step != "" and not is_execution_event(event.event_type)


def fold_execution(
    events: Iterable[ExecutorEvent], steps: Iterable[StepState] | None = None
) -> ExecutionState:
    """Fold all events of one execution (any order, duplicates allowed) into its state.

    `steps` are its folded steps; computed from `events` when not given.
    """
    unique = _dedupe(events)
    if not unique:
        raise ValueError("fold_execution needs at least one event")
    if steps is None:
        by_step: dict[str, list[ExecutorEvent]] = {}
        for ev in unique:
            if _belongs_to_step(ev):
                by_step.setdefault(ev.step, []).append(ev)
        steps = [fold_step(evs) for evs in by_step.values()]
    step_list = list(steps)
    ordered = sorted(unique, key=order_key)
    final = [
        ev
        for ev in ordered
        if is_execution_event(ev.event_type)
        and is_terminal(normalize_status(ev.status, ev.event_type))
    ]
    last = final[-1] if final else None
    return ExecutionState(
        execution_id=ordered[0].execution_id,
        status=normalize_status(last.status, last.event_type) if last else "RUNNING",
        started_at=ordered[0].created_at,
        finished_at=last.created_at if last else None,
        last_event_at=ordered[-1].created_at,
        event_count=len(ordered),
        step_count=len(step_list),
        steps_completed=sum(1 for s in step_list if s.status == "COMPLETED"),
        steps_failed=sum(1 for s in step_list if s.status == "FAILED"),
        steps_running=sum(1 for s in step_list if not is_terminal(s.status)),
    )


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
        by_step: dict[str, list[ExecutorEvent]] = {}
        for ev in evs:
            if _belongs_to_step(ev):
                by_step.setdefault(ev.step, []).append(ev)
        folded = [fold_step(s) for s in by_step.values()]
        for st in folded:
            steps[(execution_id, st.step)] = st
        executions[execution_id] = fold_execution(evs, folded)
    return steps, executions
