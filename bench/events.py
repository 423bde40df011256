"""Realistic, always-fresh noetl events for the client-side scenarios.

An execution is two execution-level events, ~10 steps of 7 step events each, and a completion
event (73 events). Execution ids are snowflake-like 63-bit integers written as text, unique per
process and per call, so no round ever measures duplicates by accident. Contexts are ~120 bytes of
JSON, as in the measurements of NOTES.md section 4.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg.types.json import Jsonb

from projector.envelope import ExecutorEvent

STEPS_PER_EXECUTION = 10
STEP_EVENTS = (
    ("step.enter", "PENDING"),
    ("command.issued", "PENDING"),
    ("command.claimed", "RUNNING"),
    ("command.started", "RUNNING"),
    ("call.done", "COMPLETED"),
    ("step.exit", "COMPLETED"),
    ("command.completed", "RUNNING"),  # arrives after step.exit, as in real traces
)
EVENTS_PER_EXECUTION = 2 + STEPS_PER_EXECUTION * len(STEP_EVENTS) + 1

# Snowflake-like ids: milliseconds in the high bits, then the process id, then a counter.
_ids = itertools.count(
    ((int(time.time() * 1000) - 1_600_000_000_000) << 22) | ((os.getpid() & 0x3FF) << 12)
)


def _context(step: int, seq: int) -> dict[str, Any]:
    # ~120 bytes once serialised.
    return {
        "attempt": 1,
        "worker": f"worker-{seq % 8}",
        "duration_ms": 100 + (seq * 37) % 5000,
        "result": {"rows": (seq * 13) % 1000, "ok": True},
        "trace": f"{seq:016x}{step:08x}",
    }


def execution_events(base: datetime | None = None) -> Iterator[ExecutorEvent]:
    """The events of one new execution, in the order a producer emits them."""
    execution = next(_ids)
    execution_id = str(execution)
    t = base or datetime.now(UTC)
    seq = 0

    def make(event_type: str, step: str, status: str, context: dict[str, Any]) -> ExecutorEvent:
        nonlocal seq, t
        seq += 1
        t = t + timedelta(milliseconds=3)
        # model_construct: the fields are already what validation would produce.
        return ExecutorEvent.model_construct(
            execution_id=execution_id,
            event_id=str(execution * 128 + seq),
            event_type=event_type,
            step=step,
            status=status,
            created_at=t,
            context=context,
            worker_id="worker-1",
            meta=None,
        )

    yield make("playbook.initialized", "playbooks/bench", "initialized", {"playbook": "bench"})
    yield make("workflow.initialized", "workflow", "initialized", {"playbook": "bench"})
    for step in range(STEPS_PER_EXECUTION):
        name = f"step_{step:02d}"
        for event_type, status in STEP_EVENTS:
            yield make(event_type, name, status, _context(step, seq))
    yield make("playbook.completed", "playbooks/bench", "completed", {"playbook": "bench"})


def fresh_events(n: int) -> list[ExecutorEvent]:
    """`n` events of new executions (the last execution may be cut short)."""
    out: list[ExecutorEvent] = []
    while len(out) < n:
        out.extend(itertools.islice(execution_events(), n - len(out)))
    return out


def copy_row(event: ExecutorEvent) -> tuple[Any, ...]:
    """The row the sink writes for `event`, for the raw COPY baseline (same columns, same types)."""
    return (
        event.execution_id,
        event.resolved_event_id(),
        event.event_type,
        event.step,
        event.status,
        event.created_at,
        Jsonb(None) if event.context is None else event.context,
        event.worker_id,
        event.meta,
    )
