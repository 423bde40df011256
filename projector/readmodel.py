"""Reading status and history from Python: what `projector status`, `history` and `executions` show.

Each function takes an open async psycopg connection (any row factory; a connection from a
``psycopg_pool.AsyncConnectionPool`` does too), runs one or two named queries ``readmodel.*``
from ``projector/sql/readmodel.sql`` and returns frozen dataclasses. They read the exact views
(``noetl.execution_status``, ``noetl.step_status``) and ``noetl.event``, so the answer is right
the moment the sink commits, whether or not ``projector project`` has caught up. Driver errors
come out as :mod:`projector.errors` types (:class:`~projector.errors.SchemaMissing` for a
database that was never migrated); an execution with no stored event raises
:class:`~projector.errors.UnknownExecution`. Use an autocommit connection (or end the
transaction yourself) so that a reader holds no transaction open between calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg.rows import class_row, scalar_row

from .errors import UnknownExecution, translating
from .fold import ExecutionState, StepState, status_filter
from .queries import query

__all__ = [
    "ExecutionStatus",
    "HistoryEvent",
    "StatusView",
    "StepStatus",
    "children",
    "execution_status",
    "executions",
    "history",
    "jsonable",
    "status_view",
    "step_statuses",
]

#: Any async connection: the functions read rows through cursors of their own row factory.
Conn = psycopg.AsyncConnection[Any]
#: Execution ids are text; integers (noetl's own ids) are read as their decimal text.
ExecutionId = str | int

_Row = TypeVar("_Row")


@dataclasses.dataclass(frozen=True)
class ExecutionStatus(ExecutionState):
    """One execution: a row of ``noetl.execution_status``.

    Fields (those of :class:`projector.fold.ExecutionState`): ``execution_id``, ``status`` (the
    status of the last terminal lifecycle event; without one ``PENDING`` before any work, else
    ``RUNNING``), ``started_at``, ``finished_at`` (None without an end event), ``last_event_at``,
    ``event_count``, ``step_count``, ``steps_completed``, ``steps_failed``, ``steps_running``,
    ``error`` (the end event's, else the first failed step's), ``parent_execution_id``,
    ``playbook``, ``last_progress_at`` (the last event that is not bookkeeping), ``open_units``
    (open iterations across the steps), ``settled`` (no step running).
    """


@dataclasses.dataclass(frozen=True)
class StepStatus(StepState):
    """One step of an execution: a row of ``noetl.step_status``.

    Fields (those of :class:`projector.fold.StepState`): ``execution_id``, ``step``, ``status``,
    ``attempts`` (tries of the iteration that needed the most), ``started_at``, ``finished_at``
    (when the step became terminal), ``last_event_at``, ``last_event_type``, ``event_count``,
    ``error`` (of a FAILED step), ``iterations``, ``iterations_completed``,
    ``iterations_failed``, ``iterations_running``.
    """


@dataclasses.dataclass(frozen=True)
class HistoryEvent:
    """One stored event as `projector history` shows it."""

    created_at: datetime
    step: str
    event_type: str
    #: The status as the producer wrote it (None when it sent none).
    status: str | None
    #: The status after the rules' normalisation (``ok`` -> ``COMPLETED``, missing -> from the
    #: event type, ...).
    normalized_status: str
    event_id: str
    #: The explicit attempt (``context.attempt``, ``meta.attempt`` or the 0-based
    #: ``meta.attempts`` plus one), None without one.
    attempt: int | None
    context: Any
    worker_id: str | None
    meta: Any


def jsonable(row: ExecutionStatus | StepStatus | HistoryEvent) -> dict[str, Any]:
    """The row's fields as a dict, in column order, timestamps as ISO 8601 text: ready for
    :func:`json.dumps` (this is what the commands' ``--json`` prints)."""
    return {
        f.name: v.isoformat() if isinstance(v := getattr(row, f.name), datetime) else v
        for f in dataclasses.fields(row)
    }


async def _fetch(
    conn: Conn, row_type: type[_Row], text: LiteralString, params: Sequence[Any] | dict[str, Any]
) -> list[_Row]:
    async with conn.cursor(row_factory=class_row(row_type)) as cur:
        await cur.execute(text, params)
        return await cur.fetchall()


async def _require_known(conn: Conn, execution_id: str) -> None:
    async with conn.cursor(row_factory=scalar_row) as cur:
        await cur.execute(query("readmodel.execution_exists"), (execution_id,))
        if not await cur.fetchone():
            raise UnknownExecution(execution_id)


@translating()
async def execution_status(conn: Conn, execution_id: ExecutionId) -> ExecutionStatus:
    """The status of one execution; :class:`UnknownExecution` when none of its events is stored."""
    key = str(execution_id)
    rows = await _fetch(conn, ExecutionStatus, query("readmodel.execution_status"), (key,))
    if not rows:
        raise UnknownExecution(key)
    return rows[0]


@translating()
async def step_statuses(conn: Conn, execution_id: ExecutionId) -> list[StepStatus]:
    """The steps of one execution in the order they started (then by name).

    Empty for an execution whose events all belong to no step; :class:`UnknownExecution` when
    none of its events is stored.
    """
    key = str(execution_id)
    rows = await _fetch(conn, StepStatus, query("readmodel.step_statuses"), (key,))
    if not rows:
        await _require_known(conn, key)
    return rows


@translating()
async def history(
    conn: Conn, execution_id: ExecutionId, *, step: str | None = None
) -> list[HistoryEvent]:
    """The stored events of one execution (only `step`'s when given) in the order the status
    rules read them: ``created_at``, terminal first, ``event_id``.

    Empty when the execution has no event of that step; :class:`UnknownExecution` when none of
    its events is stored.
    """
    key = str(execution_id)
    params = {"execution_id": key, "step": step}
    rows = await _fetch(conn, HistoryEvent, query("readmodel.history"), params)
    if not rows:
        await _require_known(conn, key)
    return rows


@translating()
async def executions(
    conn: Conn,
    *,
    status: str | None = None,
    limit: int = 20,
    stalled_for: timedelta | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[ExecutionStatus]:
    """At most `limit` executions, newest (``started_at``) first, only those in `status` when
    given (any case, or a spelling the status table reads as one: ``ok`` means ``COMPLETED``,
    ``error`` ``FAILED``; a word it does not know raises ValueError, see
    :func:`projector.fold.status_filter`), with
    `stalled_for` only the executions that are not terminal and whose ``last_progress_at`` is
    older than that, and with `since` / `until` only those that started at or after `since`
    and before `until`.

    Exact even before the projector has caught up: the newest rows of ``noetl.execution_state``
    and every execution with unprojected events, each recomputed from the log.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1")
    if stalled_for is not None and stalled_for <= timedelta(0):
        raise ValueError("stalled_for must be more than 0")
    wanted = status_filter(status) if status is not None else None
    params: dict[str, object] = {"status": wanted, "limit": limit, "stalled": stalled_for}
    if since is None and until is None:
        return await _fetch(conn, ExecutionStatus, query("readmodel.executions"), params)
    params |= {"since": since, "until": until}
    return await _fetch(conn, ExecutionStatus, query("readmodel.executions_between"), params)


@translating()
async def children(conn: Conn, execution_id: ExecutionId) -> list[ExecutionStatus]:
    """The executions whose ``parent_execution_id`` is `execution_id`, in the order they
    started (empty when there are none, also for an unknown id). Exact like
    :func:`executions`."""
    params = {"execution_id": str(execution_id)}
    return await _fetch(conn, ExecutionStatus, query("readmodel.children"), params)


@dataclasses.dataclass(frozen=True)
class StatusView:
    """Everything `projector status` (and the web view's execution page) shows of one execution."""

    execution: ExecutionStatus
    steps: list[StepStatus]
    children: list[ExecutionStatus]
    #: The parent execution when it is stored (its id alone is `execution.parent_execution_id`).
    parent: ExecutionStatus | None

    def jsonable(self) -> dict[str, object]:
        """What `projector status --json` prints (and ``/api/executions/ID`` answers)."""
        return {
            **jsonable(self.execution),
            "steps": [jsonable(s) for s in self.steps],
            "parent": jsonable(self.parent) if self.parent is not None else None,
            "children": [jsonable(c) for c in self.children],
        }


async def status_view(conn: Conn, execution_id: ExecutionId) -> StatusView:
    """The execution, its steps, its child executions and its parent (when stored); raises
    :class:`~projector.errors.UnknownExecution` when the execution has no event."""
    execution = await execution_status(conn, execution_id)
    steps = await step_statuses(conn, execution.execution_id)
    kids = await children(conn, execution.execution_id)
    parent = None
    if execution.parent_execution_id is not None:
        try:
            parent = await execution_status(conn, execution.parent_execution_id)
        except UnknownExecution:
            parent = None
    return StatusView(execution, steps, kids, parent)
