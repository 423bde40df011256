"""Property: on random traces, shuffled and with duplicates, the Python fold equals every SQL copy
of the status rules: the views, the per-key functions `noetl.step_status_of` /
`noetl.execution_status_of`, the incrementally projected tables and the rebuilt ones.

The generator is shaped to reach the edges often, not to look like real traffic:

* 1 or 2 executions, 1 to 20 draws each trace, each draw in one execution (a block's events stay
  together). A draw is one event (4 in 5) or a block (1 in 5):
  a retry re-issued with a constant ``meta.attempt = 1`` (with command ids or without), a
  parallel fan-out of 2 or 3 ``command.issued`` in one microsecond (with command ids or without,
  some closed, in any order), a loop iteration by ``meta.loop_iteration_index`` (an index may
  repeat: a retry of that iteration), a cancellation (``playbook_cancelled``,
  ``execution.cancelled`` or ``playbook.cancelled``, sometimes followed by another end), a
  lifecycle start and end in either spelling, or (2 in 7) a *tie*: a terminal event and a
  non-terminal one of its step (an opener, a start, a progress event) at one instant, in either
  arrival order, sometimes after a ``command.issued``.
* Steps: few. ``a`` 4 in 10, ``b`` 2 in 10, ``a:task_sequence`` 1 in 10, a bookkeeping node
  (``events.batch``, ``checkpointer``, ``ingress``) 1 in 10, the empty step, a playbook path,
  ``playbook`` or ``workflow`` 1 in 10 together; 1 in 40 ``é`` or a 10 KB name.
* Event types: commands (issued, claimed, started, the three closers) about half, step and call
  events and every opener suffix, loop events, lifecycle events in both spellings,
  ``subscription.lifecycle``, and bookkeeping (batch, checkpoint, heartbeats, subscription).
* Statuses: the vocabulary's common spellings, unknown words, None and ``""``; 1 in 3 gets a
  random case (lower, upper, title) and up to two characters of surrounding white space on each
  side from space, tab, CR, LF (trimmed) and VT, NBSP (not trimmed).
* Time: microsecond offsets 0 to 5, so that ties between terminal, opener and other events are
  common; 1 in 40 events at the first or the last instant Python and PostgreSQL both represent.
* Attempts: none (about a third), ``context.attempt``, ``meta.attempt``, both at once (1 in 5),
  the 0-based ``meta.attempts``, or all three; values mostly 1 to 3 (``meta.attempts`` 0 to 2),
  1 in 8 at the integer bound (2**31 - 1, 2**31 - 2 for ``meta.attempts``) and 1 in 8 invalid
  (0, -1, 2**31, true, "2", 2.0).
* Fields: ``meta.command_id`` from c1..c3 on half the events; errors (text, numbers, booleans,
  objects, arrays; never floats, whose text differs between the languages) in ``context.error``,
  ``meta.error``, the envelope's top-level ``error`` or ``result``; ``parent_execution_id`` and
  ``context.playbook`` now and then; 1 in 10 contexts not an object; 1 in 50 deep (50 levels) or
  large (20 KB) JSON.
* Delivery (:func:`deliveries`): event ids from a small alphabet (``aB0_é€z``, so that
  code-point order matters), up to 6 events sent twice, arrival shuffled, stored in up to 3
  batches (cut anywhere in the arrival). After each batch the projector (chunks of 3, 7 or 1,000
  events) catches up, projects one chunk (lagging), does nothing (stopped), loses its checkpoints
  (never ran, with state rows left behind), or runs while the batch sits in an open transaction;
  the views, filtered and read newest first in full, must equal the fold of what is committed
  each time.

How often each edge appears is measured, with a floor per edge, by
``tests/test_status_generator.py`` (its docstring has the measured shares).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from projector.database import CONNECT_KWARGS
from projector.envelope import ExecutorEvent
from projector.fold import MAX_ATTEMPT, ExecutionState, StepState, fold_all
from projector.projection import Projector, catch_up, project_chunk
from tests.eventlog import (
    EXECUTION_COLUMNS,
    STEP_COLUMNS,
    every_surface,
    insert_events,
)

T0 = datetime(2026, 3, 1, 12, 0, 0, 0, tzinfo=UTC)
FIRST = datetime(1, 1, 1, tzinfo=UTC)
LAST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
BIG_NAME = "x" * 10_240

STEPS = st.sampled_from(
    ["a"] * 16
    + ["b"] * 8
    + ["a:task_sequence"] * 4
    + ["events.batch", "checkpointer", "ingress", "checkpointer:task_sequence"]
    + ["", "", "pb/path", "playbook"]
    + ["é", BIG_NAME]
)
COMMANDS = ["command.issued"] * 4 + [
    "command.claimed",
    "command.started",
    "command.completed",
    "command.completed",
    "command.failed",
    "command.cancelled",
]
EVENT_TYPES = st.sampled_from(
    COMMANDS * 2
    + ["step.enter", "step.exit", "call.done", "call.error", "step.retry", "stage.scheduled"]
    + ["frame.restarted", "task.retrying", "task.issued", "loop.item", "call.progress"]
    + ["playbook.started", "playbook.completed", "playbook.failed", "workflow.initialized"]
    + ["playbook_started", "playbook_completed", "playbook_failed", "execution_cancelled"]
    + ["subscription.lifecycle", "batch.processing", "checkpoint.committed"]
    + ["command.heartbeat", "heartbeat", "subscription.message.received"]
)
WORDS = [None, "", "RUNNING", "COMPLETED", "FAILED", "PENDING", "STARTED", "CANCELLED"]
WORDS += ["SKIPPED", "initialized", "completed", "failed", "ok", "OK", "success", "error"]
WORDS += ["Done", "canceled", "QUEUED", "CLAIMED", "DEACTIVATED", "TIMED_OUT", "weird", "\u017f"]
WHITE = " \t\r\n\v\u00a0"


@st.composite
def statuses(draw: st.DrawFn) -> str | None:
    word = draw(st.sampled_from(WORDS))
    if word is None or draw(st.integers(0, 2)) > 0:
        return word
    spelled = draw(st.sampled_from([str.lower, str.upper, str.title, str]))(word)
    left = draw(st.text(alphabet=WHITE, max_size=2))
    return left + spelled + draw(st.text(alphabet=WHITE, max_size=2))


def mostly(common: st.SearchStrategy[Any], edge: Any, invalid: list[Any]) -> st.SearchStrategy[Any]:
    """`common` 6 times in 8, the bound `edge` once, one of `invalid` once."""
    return st.one_of(*[common] * 6, st.just(edge), st.sampled_from(invalid))


ATTEMPT = mostly(st.integers(1, 3), MAX_ATTEMPT, [0, -1, MAX_ATTEMPT + 1, True, "2", 2.0])
ATTEMPT_INDEX = mostly(st.integers(0, 2), MAX_ATTEMPT - 1, [-1, MAX_ATTEMPT, False, "0"])
ERROR = st.one_of(
    st.text(alphabet='ab é\n"\\', max_size=5),
    st.integers(-5, 5),
    st.booleans(),
    st.dictionaries(st.sampled_from(["code", "k", "message"]), st.integers(0, 9), max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
)


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for i in range(levels):
        value = {"level": i, "next": [value]}
    return value


@st.composite
def fields(draw: st.DrawFn) -> dict[str, Any]:
    """context, meta and top-level extras of one event."""
    context: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    where = draw(st.sampled_from(["none"] * 7 + ["context"] * 3 + ["meta"] * 3 + ["both"] * 4))
    where = where if draw(st.integers(0, 9)) else draw(st.sampled_from(["attempts", "all"]))
    if where in ("context", "both", "all"):
        context["attempt"] = draw(ATTEMPT)
    if where in ("meta", "both", "all"):
        meta["attempt"] = draw(ATTEMPT)
    if where in ("attempts", "all"):
        meta["attempts"] = draw(ATTEMPT_INDEX)
    if draw(st.booleans()):
        meta["command_id"] = draw(st.sampled_from(["c1", "c2", "c3"]))
    if draw(st.integers(0, 3)) == 0:
        error = draw(ERROR)
        place = draw(st.sampled_from(["context", "meta", "top", "result", "context_and_meta"]))
        if place in ("context", "context_and_meta"):
            context["error"] = error
        if place in ("meta", "context_and_meta"):
            meta["error"] = {"from": "meta"}
        if place == "top":
            extra["error"] = error
        if place == "result":
            extra["result"] = draw(st.sampled_from([{"error": error}, {"context": {"error": 1}}]))
    if draw(st.integers(0, 9)) == 0:
        parent = draw(st.sampled_from([386072706271334400, "p1", "p2"]))
        target = draw(st.sampled_from([context, meta, extra]))
        target["parent_execution_id"] = parent
    if draw(st.integers(0, 9)) == 0:
        context["playbook"] = draw(st.sampled_from(["./a.yaml", "./b.yaml", 3]))
    shape = draw(st.integers(0, 49))
    if shape == 0:
        context["deep"] = deep(50)
    elif shape == 1:
        context["blob"] = "x" * 20_000
    out: dict[str, Any] = {"context": context, "meta": meta or None, **extra}
    if draw(st.integers(0, 9)) == 0:
        out["context"] = draw(st.sampled_from([[1], "text", 7, None]))
    return out


@st.composite
def times(draw: st.DrawFn, base: int | None = None) -> datetime:
    if base is None and draw(st.integers(0, 39)) == 0:
        return draw(st.sampled_from([FIRST, LAST]))
    return T0 + timedelta(microseconds=draw(st.integers(0, 5)) if base is None else base)


@st.composite
def single(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [
        {
            "event_type": draw(EVENT_TYPES),
            "status": draw(statuses()),
            "step": draw(STEPS),
            "created_at": draw(times()),
            **draw(fields()),
        }
    ]


@st.composite
def block(draw: st.DrawFn) -> list[dict[str, Any]]:
    kind = draw(st.sampled_from(["retry", "fan_out", "loop", "cancel", "lifecycle", "tie", "tie"]))
    step = draw(st.sampled_from(["a", "b", "a:task_sequence"]))
    t0 = draw(st.integers(0, 3))
    ids = draw(st.booleans())
    out: list[dict[str, Any]] = []

    def add(event_type: str, status: str | None, at: int, **more: Any) -> None:
        out.append(
            {
                "event_type": event_type,
                "status": status,
                "step": step,
                "created_at": T0 + timedelta(microseconds=at),
                "context": more.pop("context", {}),
                **more,
            }
        )

    if kind == "retry":  # both noetl servers stamp meta.attempt = 1 on every re-issue
        for n, closer in enumerate(
            draw(st.lists(st.sampled_from(["failed", "completed"]), min_size=1, max_size=3))
        ):
            meta = {"attempt": 1, **({"command_id": f"r{n}"} if ids else {})}
            add("command.issued", "PENDING", t0 + 2 * n, meta=meta)
            status = (
                "FAILED" if closer == "failed" else draw(st.sampled_from(["COMPLETED", "RUNNING"]))
            )
            add(
                f"command.{closer}",
                status,
                t0 + 2 * n + 1,
                meta={k: v for k, v in meta.items() if k == "command_id"} or None,
                context={"error": f"try {n}"},
            )
    elif kind == "fan_out":  # parallel commands issued in one microsecond
        k = draw(st.integers(2, 3))
        for n in range(k):
            add("command.issued", "PENDING", t0, meta={"command_id": f"f{n}"} if ids else None)
        for n in draw(st.permutations(range(k)))[: draw(st.integers(0, k))]:
            closer = draw(
                st.sampled_from(["command.completed", "command.failed", "command.cancelled"])
            )
            add(closer, draw(statuses()), t0 + 1 + n, meta={"command_id": f"f{n}"} if ids else None)
    elif kind == "loop":
        for n, index in enumerate(draw(st.lists(st.integers(0, 1), min_size=1, max_size=3))):
            meta = {"loop_event_id": "L", "loop_iteration_index": index, "command_id": f"l{n}"}
            add("command.issued", "PENDING", t0 + n, meta=meta)
            closer = draw(st.sampled_from(["command.completed", "command.failed"]))
            add(closer, None, t0 + n + 1, meta={"command_id": f"l{n}"})
    elif kind == "cancel":
        cancel = draw(
            st.sampled_from(["playbook_cancelled", "execution.cancelled", "playbook.cancelled"])
        )
        step = draw(st.sampled_from(["playbook", "", "pb/path"]))
        add(cancel, draw(st.sampled_from(["CANCELLED", None, " canceled\n"])), t0 + 2)
        if draw(st.booleans()):
            add(draw(st.sampled_from(["playbook_failed", "playbook.completed"])), None, t0 + 3)
    elif kind == "tie":  # a terminal event and another of its step at one instant, either order
        terminal, other = draw(
            st.sampled_from(
                [
                    (("step.exit", "COMPLETED"), ("step.enter", "RUNNING")),
                    (("command.failed", "FAILED"), ("command.issued", "PENDING")),
                    (("call.error", " failed\t"), ("step.retry", None)),
                    (("call.done", "ok\r\n"), ("call.progress", "RUNNING")),
                    (("command.completed", "COMPLETED"), ("command.started", "STARTED")),
                ]
            )
        )
        pair = [terminal, other] if draw(st.booleans()) else [other, terminal]
        if draw(st.booleans()):
            add("command.issued", "PENDING", t0)
        for event_type, status in pair:
            add(event_type, status, t0 + 1, meta=draw(st.sampled_from([None, {"attempt": 1}])))
    else:
        start, end = draw(
            st.sampled_from(
                [
                    ("playbook.started", "playbook.completed"),
                    ("playbook_started", "playbook_failed"),
                    ("workflow.initialized", "workflow.failed"),
                ]
            )
        )
        step = draw(st.sampled_from(["pb/path", "playbook", "workflow", "ingress"]))
        add(start, "STARTED", t0)
        if draw(st.booleans()):
            add(end, None, t0 + 4, error="the end")
    return out


@st.composite
def traces(draw: st.DrawFn, n_exec: int) -> list[ExecutorEvent]:
    groups = draw(
        st.lists(
            st.one_of(single(), single(), single(), single(), block()), min_size=1, max_size=20
        )
    )
    # One execution per group: a block's events stay together.
    docs = [
        (x, doc) for group in groups for x in [draw(st.integers(0, n_exec - 1))] for doc in group
    ]
    ids = draw(
        st.lists(
            st.text(alphabet="aB0_é€z", min_size=1, max_size=3),
            min_size=len(docs),
            max_size=len(docs),
            unique=True,
        )
    )
    return [
        ExecutorEvent.model_validate({"execution_id": str(x), "event_id": i, **doc})
        for (x, doc), i in zip(docs, ids, strict=True)
    ]


@st.composite
def deliveries(draw: st.DrawFn, prefix: str = "") -> tuple[list[ExecutorEvent], list[int]]:
    """A trace as it arrives: its execution ids prefixed with `prefix`, up to 6 events sent
    twice, shuffled; and where the arrival is cut into batches (sorted positions, 0 and the end
    included)."""
    drawn = draw(traces(draw(st.integers(1, 2))))
    events = [ev.model_copy(update={"execution_id": prefix + ev.execution_id}) for ev in drawn]
    events += [events[i % len(events)] for i in draw(st.lists(st.integers(0, 1000), max_size=6))]
    draw(st.randoms(use_true_random=False)).shuffle(events)  # arrival order is random
    cuts = draw(st.lists(st.integers(0, len(events)), max_size=2))
    return events, sorted({*cuts, 0, len(events)})


_run = itertools.count()


#: What happens after each batch is stored: the projector catches up, projects one chunk (it
#: lags), does nothing (stopped), loses every checkpoint (as if it never ran; the state tables
#: keep their rows and must be ignored), or runs while the batch is in an open transaction.
MODES = ["project", "chunk", "none", "forget", "inflight"]


async def assert_views(conn: psycopg.AsyncConnection[Any], stored: list[ExecutorEvent]) -> None:
    """The views, filtered by execution and read newest first in full, equal the fold of the
    events committed so far (each row once)."""
    steps, executions = fold_all(stored)
    ids = sorted({ev.execution_id for ev in stored})
    cur = await conn.execute(
        f"SELECT {STEP_COLUMNS} FROM noetl.step_status WHERE execution_id = ANY(%s)", (ids,)
    )
    got_steps = [StepState(*r) for r in await cur.fetchall()]
    assert {(st.execution_id, st.step): st for st in got_steps} == steps
    assert len(got_steps) == len(steps)
    cur = await conn.execute(
        f"SELECT {EXECUTION_COLUMNS} FROM noetl.execution_status WHERE execution_id = ANY(%s)",
        (ids,),
    )
    got = [ExecutionState(*r) for r in await cur.fetchall()]
    assert {x.execution_id: x for x in got} == executions
    assert len(got) == len(executions)
    cur = await conn.execute(
        f"SELECT {EXECUTION_COLUMNS} FROM noetl.execution_status "
        "ORDER BY started_at DESC LIMIT 1000000"
    )
    newest = [ExecutionState(*r) for r in await cur.fetchall() if r[0] in set(ids)]
    assert {x.execution_id: x for x in newest} == executions
    assert len(newest) == len(executions)


async def check(
    url: str,
    events: list[ExecutorEvent],
    batches: list[list[ExecutorEvent]],
    chunk: int,
    modes: list[str],
) -> None:
    steps, executions = fold_all(events)
    conn = await psycopg.AsyncConnection.connect(url, autocommit=True, **CONNECT_KWARGS)
    try:
        seen: set[tuple[str, str]] = set()
        stored: list[ExecutorEvent] = []
        for batch, mode in zip(batches, itertools.cycle(modes), strict=False):
            fresh = []
            for ev in batch:  # the sink stores each (execution_id, event_id) once
                key = (ev.execution_id, ev.resolved_event_id())
                if key not in seen:
                    seen.add(key)
                    fresh.append(ev)
            if mode == "inflight":
                other = await psycopg.AsyncConnection.connect(url, **CONNECT_KWARGS)
                async with other, other.transaction():
                    await insert_events(other, fresh)
                    await catch_up(conn, max_events=chunk)  # stops below the open batch
                    await assert_views(conn, stored)
            else:
                await insert_events(conn, fresh)
            stored += fresh
            if mode == "project":
                await Projector(url, max_events=chunk).once()
            elif mode == "chunk":
                await project_chunk(conn, max_events=chunk)
            elif mode == "forget":
                await conn.execute("DELETE FROM noetl.projector_checkpoint")
            await assert_views(conn, stored)
        for surface, (got_steps, got_executions) in (
            await every_surface(conn, url, events)
        ).items():
            assert got_steps == steps, surface
            assert got_executions == executions, surface
    finally:
        await conn.close()


@settings(
    max_examples=int(os.environ.get("PROJECTOR_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(
    data=st.data(),
    chunk=st.sampled_from([3, 7, 1000]),
    modes=st.lists(st.sampled_from(MODES), min_size=2, max_size=4),
)
def test_fold_views_and_tables_agree(
    database_url: str, data: st.DataObject, chunk: int, modes: list[str]
) -> None:
    # Executions of this example only (the database is shared by all examples).
    events, bounds = data.draw(deliveries(f"p{next(_run)}-"))
    batches = [events[a:b] for a, b in itertools.pairwise(bounds)]
    asyncio.run(check(database_url, events, batches, chunk, modes))
