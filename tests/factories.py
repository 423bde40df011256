"""Small builders of envelopes for the tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from projector import ExecutorEvent

T0 = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)


def event(
    execution_id: str = "exec-1",
    event_id: str | None = "1",
    *,
    event_type: str = "command.completed",
    step: str = "step-a",
    status: str | None = "COMPLETED",
    at: float = 0.0,
    context: Any = None,
    **extra: Any,
) -> ExecutorEvent:
    return ExecutorEvent(
        execution_id=execution_id,
        event_id=event_id,
        event_type=event_type,
        step=step,
        status=status,
        created_at=T0 + timedelta(seconds=at),
        context={"n": event_id} if context is None else context,
        **extra,
    )


def events(n: int, execution_prefix: str = "exec", per_execution: int = 70) -> list[ExecutorEvent]:
    return [
        event(
            f"{execution_prefix}-{i // per_execution}",
            str(i),
            step=f"s{i % 10}",
            at=i / 1000,
        )
        for i in range(n)
    ]
