"""Every status rule pinned by examples, in Python and in every SQL copy of the rules.

The scalar rules (statuses, terminal set, what an event is, step names, explicit attempts, error,
parent and command fields) are tables run through `projector.fold` and the SQL functions of
migration 0005. The walk and the execution rules are small traces (`RULES`), one execution each,
stored in one database and read back from the views, the tables after `projector project`
(fed in two batches, small chunks), `step_status_of` / `execution_status_of` and the rebuilt
tables: each surface must give the expected answer, and the same as the Python fold.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from projector.envelope import ExecutorEvent
from projector.fold import (
    BOOKKEEPING_STEPS,
    LIFECYCLE_PREFIXES,
    MAX_ATTEMPT,
    STATUS_TABLE,
    STATUSES,
    TERMINAL,
    command_id,
    error_text,
    event_class,
    explicit_attempt,
    fold_all,
    is_execution_event,
    is_terminal,
    loop_iteration,
    normalize_status,
    parent_execution_id,
    step_name,
)
from tests.conftest import fresh_database
from tests.eventlog import SURFACES, Answer, every_surface, insert_events

Conn = psycopg.AsyncConnection[Any]
T0 = datetime(2026, 1, 20, 11, 56, 27, 292930, tzinfo=UTC)
TRIMMED = (" ", "\t", "\r", "\n")


def sql_value(url: str, expression: str, *params: Any) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT {expression}", params).fetchone()
    assert row is not None
    return row[0]


def sql_values(url: str, expression: str, rows: list[tuple[Any, ...]]) -> list[Any]:
    """`expression` (with %s per column) for each parameter row, in one round trip each."""
    with psycopg.connect(url) as conn:
        return [conn.execute(f"SELECT {expression}", r).fetchone()[0] for r in rows]  # type: ignore[index]


# --- statuses -----------------------------------------------------------------------------


def status_cases() -> Iterator[tuple[str | None, str, str]]:
    """(raw status, event type, expected): every alias in every spelling the rules accept."""
    for raw, status in STATUS_TABLE.items():
        yield raw, "x", status
        yield raw.lower(), "x", status
        yield raw.title(), "x", status
        for c in TRIMMED:
            yield c + raw, "x", status
            yield raw.lower() + c, "x", status
    yield " \t\r\n ok \n\r\t ", "x", "COMPLETED"
    # Not trimmed, not case-mapped (ASCII only), not in the table: RUNNING.
    for raw in (
        "\vOK",
        "\fOK",
        "\u00a0OK",
        "OK\u3000",
        "\u017fuccess",
        "\uff2f\uff2b",
        "straße",
        "OK!",
        "?",
    ):
        yield raw, "call.done", "RUNNING"
    # Missing or empty: from the event type (ASCII-lower-cased), first rule that matches.
    for raw in (None, "", " ", "\t\r\n"):
        yield raw, "call.error", "FAILED"
    yield None, "Command.FAILED", "FAILED"
    yield None, "task.fail", "FAILED"
    yield None, "error.done", "FAILED"
    yield None, "task.cancelled", "CANCELLED"
    yield None, "cancel.done", "CANCELLED"
    yield None, "x.skipped", "SKIPPED"
    yield None, "skip.complete", "SKIPPED"
    yield None, "call.done", "COMPLETED"
    yield None, "step.exit", "COMPLETED"
    yield None, "job.Completed", "COMPLETED"
    yield None, "x.success", "COMPLETED"
    yield None, "command.issued", "PENDING"
    yield None, "x.ISSUED", "PENDING"
    yield None, "job.queued", "PENDING"
    yield None, "stage.scheduled", "PENDING"
    yield None, "issued.x", "RUNNING"
    yield None, "command.claimed", "RUNNING"
    yield None, "heartbeat", "RUNNING"


def test_normalize_status_python_and_sql(database_url: str) -> None:
    cases = list(status_cases())
    assert {c[2] for c in cases} == set(STATUSES)
    for raw, event_type, expected in cases:
        assert normalize_status(raw, event_type) == expected, (raw, event_type)
    got = sql_values(database_url, "noetl.normalize_status(%s, %s)", [c[:2] for c in cases])
    assert got == [c[2] for c in cases]


def test_terminal_set_python_and_sql(database_url: str) -> None:
    values = [*STATUSES, "completed", "", None]
    expected = [s in ("COMPLETED", "FAILED", "CANCELLED", "SKIPPED") for s in values]
    assert [is_terminal(s) for s in values] == expected
    assert {"COMPLETED", "FAILED", "CANCELLED", "SKIPPED"} == TERMINAL
    assert sql_values(database_url, "noetl.is_terminal(%s)", [(s,) for s in values]) == expected


# --- what an event is -----------------------------------------------------------------------


def class_cases() -> Iterator[tuple[str, str, str]]:
    """(event type, step as stored, class)."""
    for prefix in LIFECYCLE_PREFIXES:
        yield prefix + "started", "tests/playbooks/x", "lifecycle"
        yield prefix + "cancelled", "playbook", "lifecycle"
        yield prefix + "completed", "", "lifecycle"
        yield prefix + "x", "events.batch", "lifecycle"  # lifecycle first
    yield "subscription.lifecycle", "ingress", "lifecycle"
    yield "Playbook.started", "p", "step"  # case-sensitive
    yield "playbooks.started", "p", "step"
    yield "playbook", "p", "step"
    for name in BOOKKEEPING_STEPS:
        yield "batch.accepted", name, "bookkeeping"
        yield "command.completed", name + ":task_sequence", "bookkeeping"
    yield "checkpoint.committed", "anything", "bookkeeping"
    yield "subscription.message.received", "s", "bookkeeping"
    yield "heartbeat", "", "bookkeeping"
    yield "command.heartbeat", "fetch", "bookkeeping"
    yield "heartbeats", "fetch", "step"
    yield "heartbeat.sent", "fetch", "step"
    yield "events.batch", "fetch", "step"
    yield "step.exit", "checkpointer2", "step"
    yield "loop.item", "", "execution"
    yield "command.issued", ":task_sequence", "step"


def test_event_class_python_and_sql(database_url: str) -> None:
    cases = list(class_cases())
    for event_type, step, expected in cases:
        assert event_class(event_type, step_name(step)) == expected, (event_type, step)
        assert is_execution_event(event_type) == (expected == "lifecycle")
    got = sql_values(database_url, "noetl.event_class(%s, %s)", [c[:2] for c in cases])
    assert got == [c[2] for c in cases]
    steps = sql_values(database_url, "noetl.is_step_event(%s, %s)", [c[:2] for c in cases])
    assert steps == [c[2] == "step" for c in cases]


@pytest.mark.parametrize(
    ("raw", "step"),
    [
        ("fetch:task_sequence", "fetch"),
        ("a:task_sequence:task_sequence", "a:task_sequence"),
        (":task_sequence", ":task_sequence"),
        ("x:task_sequences", "x:task_sequences"),
        ("x:taskXsequence", "x:taskXsequence"),
        ("é:task_sequence", "é"),
        ("fetch", "fetch"),
        ("", ""),
    ],
)
def test_step_name_python_and_sql(database_url: str, raw: str, step: str) -> None:
    assert step_name(raw) == step
    assert sql_value(database_url, "noetl.step_name(%s)", raw) == step


# --- fields read from context and meta ---------------------------------------------------------


ATTEMPTS: list[tuple[Any, Any, int | None]] = [
    ({"attempt": 2}, None, 2),
    ({"attempt": 2}, {"attempt": 5, "attempts": 9}, 2),  # context first
    ({"attempt": 0}, {"attempt": 3}, 3),
    ({}, {"attempt": 3, "attempts": 7}, 3),  # meta.attempt before meta.attempts
    ({}, {"attempts": 0}, 1),  # the Rust worker counts from 0
    ({}, {"attempts": 1}, 2),
    ({}, {"attempt": 0, "attempts": 4}, 5),
    ({"attempt": MAX_ATTEMPT}, None, MAX_ATTEMPT),
    ({"attempt": MAX_ATTEMPT + 1}, {"attempt": 4}, 4),
    ({}, {"attempts": MAX_ATTEMPT - 1}, MAX_ATTEMPT),
    ({}, {"attempts": MAX_ATTEMPT}, None),
    ({}, {"attempts": -1}, None),
    ({"attempt": -1}, None, None),
    ({"attempt": True}, {"attempts": False}, None),
    ({"attempt": "2"}, {"attempts": "1"}, None),
    ({"attempt": 2.0}, {"attempts": 1.0}, None),
    ({"attempt": None}, {"attempt": None}, None),
    ({"attempt": 10**30}, None, None),
    ([1, 2], {"attempt": 5}, 5),
    ("text", None, None),
    (7, {"attempts": 2}, 3),
]


def test_explicit_attempt_python_and_sql(database_url: str) -> None:
    for context, meta, expected in ATTEMPTS:
        assert explicit_attempt(context, meta) == expected, (context, meta)
    rows = [(Jsonb(c), None if m is None else Jsonb(m)) for c, m, _ in ATTEMPTS]
    assert sql_values(database_url, "noetl.event_attempt(%s, %s)", rows) == [a[2] for a in ATTEMPTS]
    assert sql_value(database_url, "noetl.next_attempt(%s)", MAX_ATTEMPT) == MAX_ATTEMPT


ERRORS: list[tuple[Any, Any, str | None]] = [
    ({"error": "boom"}, None, "boom"),
    ({"error": "c"}, {"error": "m"}, "c"),  # context first
    ({"error": None}, {"error": "m"}, "m"),  # JSON null is no error
    ({}, {"error": {"message": "x", "code": 7}}, '{"code": 7, "message": "x"}'),
    ({}, {"unknown_fields": {"error": "top-level"}}, "top-level"),
    ({}, {"error": "m", "unknown_fields": {"error": "top"}}, "m"),
    ({}, {"unknown_fields": {"error": None, "result": {"error": "r"}}}, "r"),
    ({}, {"unknown_fields": {"result": {"context": {"error": "rc"}}}}, "rc"),
    ({}, {"unknown_fields": {"result": {"error": "r", "context": {"error": "rc"}}}}, "r"),
    ({}, {"unknown_fields": {"result": "text"}}, None),
    ({"error": [1, "a", True, None]}, None, '[1, "a", true, null]'),
    ({"error": 3}, None, "3"),
    ({"error": {"message": "é€"}}, None, '{"message": "é€"}'),  # jsonb keeps non-ASCII as is
    ({"error": False}, None, "false"),
    ({"error": ""}, None, ""),
    ([{"error": "x"}], {"error": None}, None),
    ("error", None, None),
]


def test_error_text_python_and_sql(database_url: str) -> None:
    for context, meta, expected in ERRORS:
        assert error_text(context, meta) == expected, (context, meta)
    rows = [(Jsonb(c), None if m is None else Jsonb(m)) for c, m, _ in ERRORS]
    assert sql_values(database_url, "noetl.event_error(%s, %s)", rows) == [e[2] for e in ERRORS]


PARENTS: list[tuple[Any, Any, str | None]] = [
    ({"parent_execution_id": 386072706271334400}, None, "386072706271334400"),
    ({"parent_execution_id": "p1"}, {"parent_execution_id": "p2"}, "p1"),
    ({}, {"parent_execution_id": "p2"}, "p2"),
    ({}, {"unknown_fields": {"parent_execution_id": 7}}, "7"),
    ({"parent_execution_id": None}, {"unknown_fields": {"parent_execution_id": "p3"}}, "p3"),
    ([], None, None),
]


def test_parent_execution_id_python_and_sql(database_url: str) -> None:
    for context, meta, expected in PARENTS:
        assert parent_execution_id(context, meta) == expected
    rows = [(Jsonb(c), None if m is None else Jsonb(m)) for c, m, _ in PARENTS]
    assert sql_values(database_url, "noetl.event_parent(%s, %s)", rows) == [p[2] for p in PARENTS]


COMMANDS: list[tuple[Any, str | None, str | None]] = [
    ({"command_id": "c1"}, "c1", None),
    ({"command_id": 12}, "12", None),
    ({"command_id": None, "loop_iteration_index": 3}, None, "\x1f3"),
    ({"loop_event_id": "L", "loop_iteration_index": 0}, None, "L\x1f0"),
    ({"loop_event_id": "L"}, None, None),
    (None, None, None),
]


def test_command_and_iteration_python_and_sql(database_url: str) -> None:
    for meta, cid, key in COMMANDS:
        assert (command_id(meta), loop_iteration(meta)) == (cid, key)
    rows = [(None if m is None else Jsonb(m),) for m, _, _ in COMMANDS]
    assert sql_values(database_url, "noetl.event_command_id(%s)", rows) == [c[1] for c in COMMANDS]
    assert sql_values(database_url, "noetl.event_iteration(%s)", rows) == [c[2] for c in COMMANDS]


# --- the walk and the execution rules, on traces ------------------------------------------------


@dataclass
class Rule:
    """A trace (one execution) and what each surface must say about it."""

    events: list[ExecutorEvent]
    #: Exactly the execution's steps, with the columns each must have.
    steps: dict[str, dict[str, Any]]
    execution: dict[str, Any] = field(default_factory=dict)


_ids = itertools.count()


class Trace:
    """Builds the events of one execution; `at` is seconds after T0."""

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        self.events: list[ExecutorEvent] = []

    def __call__(
        self,
        event_type: str,
        status: str | None,
        step: str = "s",
        *,
        at: float | None = None,
        event_id: str | None = None,
        context: Any = None,
        meta: dict[str, Any] | None = None,
        **extra: Any,
    ) -> Trace:
        n = len(self.events)
        doc = {
            "execution_id": self.execution_id,
            "event_id": event_id if event_id is not None else f"{next(_ids):06d}",
            "event_type": event_type,
            "step": step,
            "status": status,
            "created_at": T0 + timedelta(seconds=n if at is None else at),
            "context": {} if context is None else context,
            "meta": meta,
            **extra,  # top-level fields the envelope keeps in meta.unknown_fields
        }
        self.events.append(ExecutorEvent.model_validate(doc))
        return self


def t(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def cid(c: str, **more: Any) -> dict[str, Any]:
    return {"command_id": c, **more}


def rules() -> dict[str, Rule]:
    r: dict[str, Rule] = {}

    def rule(name: str) -> Trace:
        return Trace(name)

    x = rule("order_is_created_at_not_arrival")
    x("step.exit", "COMPLETED", at=2)("step.enter", "RUNNING", at=1)
    r[x.execution_id] = Rule(
        x.events,
        {
            "s": {
                "status": "COMPLETED",
                "started_at": t(1),
                "finished_at": t(2),
                "last_event_type": "step.exit",
                "iterations": 1,
            }
        },
    )
    x = rule("tie_terminal_first")  # exit first, then enter: the step is entered again
    x("step.enter", "RUNNING", at=1)("step.exit", "COMPLETED", at=1)
    r[x.execution_id] = Rule(
        x.events,
        {
            "s": {
                "status": "RUNNING",
                "iterations": 2,
                "iterations_completed": 1,
                "iterations_running": 1,
                "last_event_type": "step.enter",
            }
        },
    )
    x = rule("tie_event_id_by_code_point")  # "B" < "a": FAILED, then COMPLETED
    x("step.exit", "COMPLETED", at=1, event_id="a")
    x("step.exit", "FAILED", at=1, event_id="B", context={"error": "b"})
    r[x.execution_id] = Rule(x.events, {"s": {"status": "COMPLETED", "error": None}})
    x = rule("tie_event_id_non_ascii")  # "z" < "é": COMPLETED, then FAILED
    x("step.exit", "FAILED", at=1, event_id="é", context={"error": "late"})
    x("step.exit", "COMPLETED", at=1, event_id="z")
    r[x.execution_id] = Rule(x.events, {"s": {"status": "FAILED", "error": "late"}})
    x = rule("normalised_statuses")
    x("step.enter", " \trunning\r\n", "a")("call.done", "\nSuccess\t", "a")
    x("step.enter", "Started", "b")("step.exit", "weird", "b")
    x("step.enter", None, "c")("step.exit", None, "c")
    r[x.execution_id] = Rule(
        x.events,
        {
            "a": {"status": "COMPLETED"},
            "b": {"status": "RUNNING", "iterations_running": 1},  # unknown is RUNNING
            "c": {"status": "COMPLETED"},
        },
    )
    x = rule("terminal_set")
    x("step.exit", "COMPLETED", "ok")
    x("step.exit", "error", "failed", context={"error": "x"})
    x("step.exit", "canceled", "cancelled")
    x("step.enter", "SKIPPED", "skipped")
    r[x.execution_id] = Rule(
        x.events,
        {
            "ok": {"status": "COMPLETED", "finished_at": t(0)},
            "failed": {"status": "FAILED", "error": "x", "iterations_failed": 1},
            "cancelled": {"status": "CANCELLED"},
            "skipped": {"status": "SKIPPED", "iterations_completed": 0},
        },
        {
            "status": "RUNNING",
            "steps_completed": 1,
            "steps_failed": 1,
            "steps_running": 0,
            "settled": True,
            "error": "x",
        },
    )
    x = rule("lifecycle_with_dots")
    x("playbook.initialized", "INITIALIZED", "tests/playbooks/etl")
    x("workflow.initialized", "initialized", "workflow")
    x("step.enter", "RUNNING", "a")("step.exit", "COMPLETED", "a")
    x("workflow.completed", "completed", "workflow")
    x("playbook.completed", "completed", "tests/playbooks/etl")
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "COMPLETED"}},
        {
            "status": "COMPLETED",
            "finished_at": t(5),
            "playbook": "tests/playbooks/etl",
            "event_count": 6,
            "step_count": 1,
        },
    )
    x = rule("lifecycle_with_underscores")  # the Rust server
    x("playbook_started", "STARTED", "tests/playbooks/rust")
    x("command.issued", "PENDING", "a", meta=cid("c1", attempt=1))
    x("command.started", "STARTED", "a", meta=cid("c1"))
    x("command.completed", "COMPLETED", "a", meta=cid("c1"))
    x("playbook_completed", "COMPLETED", "tests/playbooks/rust")
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "COMPLETED", "attempts": 1}},
        {"status": "COMPLETED", "finished_at": t(4), "playbook": "tests/playbooks/rust"},
    )
    x = rule("bookkeeping_is_no_step")
    x("step.enter", "RUNNING", "a")
    x("command.heartbeat", "RUNNING", "a")
    x("batch.accepted", "ACCEPTED", "events.batch")("batch.completed", "COMPLETED", "events.batch")
    x("step.exit", "COMPLETED", "a", at=4)
    x("checkpoint.committed", "OK", "checkpointer", at=100)
    x("command.completed", "COMPLETED", "checkpointer:task_sequence", at=101)
    x("subscription.message.received", "RECEIVED", "ingress", at=102)
    x("heartbeat", None, "", at=103)
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "COMPLETED", "event_count": 2, "last_event_at": t(4)}},
        {
            "event_count": 9,
            "step_count": 1,
            "last_progress_at": t(4),
            "last_event_at": t(103),
            "status": "RUNNING",
            "settled": True,
        },
    )
    x = rule("task_sequence_is_its_parent_step")
    x("command.issued", "PENDING", "fetch:task_sequence", meta=cid("c1"))
    x("loop.item", "RUNNING", "fetch")
    x("command.completed", "COMPLETED", "fetch:task_sequence", meta=cid("c1"))
    r[x.execution_id] = Rule(
        x.events, {"fetch": {"status": "COMPLETED", "event_count": 3, "iterations": 1}}
    )
    x = rule("explicit_attempt_precedence")
    x("step.enter", "RUNNING", "ctx", context={"attempt": 2}, meta={"attempt": 5})
    x("step.exit", "COMPLETED", "ctx")
    x("step.enter", "RUNNING", "meta", meta={"attempt": 3, "attempts": 7})
    x("step.exit", "COMPLETED", "meta")
    x("step.enter", "RUNNING", "zero_based", meta={"attempts": 0})
    x("call.error", "FAILED", "zero_based", meta={"attempts": 0}, context={"error": "e0"})
    x("step.enter", "RUNNING", "zero_based", meta={"attempts": 1})
    x("step.exit", "COMPLETED", "zero_based", meta={"attempts": 1})
    x("call.error", "FAILED", "zero_based", meta={"attempts": 0})  # a straggler of attempt 1
    r[x.execution_id] = Rule(
        x.events,
        {
            "ctx": {"attempts": 2, "status": "COMPLETED"},
            "meta": {"attempts": 3, "status": "COMPLETED"},
            "zero_based": {"attempts": 2, "status": "COMPLETED", "iterations": 1},
        },
    )
    x = rule("attempts_stop_at_the_integer_bound")
    x("call.error", "FAILED", context={"attempt": MAX_ATTEMPT, "error": "e"})
    x("step.retry", "RUNNING")("step.exit", "COMPLETED")
    x("call.error", "FAILED", "other", context={"attempt": MAX_ATTEMPT + 1}, meta={"attempt": 2})
    r[x.execution_id] = Rule(
        x.events,
        {
            "s": {"status": "COMPLETED", "attempts": MAX_ATTEMPT},
            "other": {"status": "FAILED", "attempts": 2},
        },
    )
    x = rule("retry_reissued_with_constant_meta_attempt")  # both noetl servers do this
    x("command.issued", "PENDING", "a", meta={"attempt": 1})
    x("command.started", "RUNNING", "a")
    x("command.failed", "FAILED", "a", context={"error": "boom"})
    x("command.issued", "PENDING", "a", meta={"attempt": 1})
    x("command.started", "RUNNING", "a")
    x("command.completed", "COMPLETED", "a")
    x("command.issued", "PENDING", "b", meta=cid("b1", attempt=1))
    x("command.failed", "FAILED", "b", meta=cid("b1"))
    x("command.issued", "PENDING", "b", meta=cid("b2", attempt=1))
    x("command.completed", "COMPLETED", "b", meta=cid("b2"))
    done_on_retry = {
        "status": "COMPLETED",
        "attempts": 2,
        "iterations": 1,
        "iterations_completed": 1,
        "iterations_failed": 0,
        "error": None,
    }
    r[x.execution_id] = Rule(x.events, {"a": done_on_retry, "b": done_on_retry})
    x = rule("openers_without_commands")
    x("step.enter", "RUNNING", "again")("step.exit", "COMPLETED", "again")
    x("step.enter", "RUNNING", "again")("step.exit", "COMPLETED", "again")
    x("step.enter", "RUNNING", "retried")("call.error", "FAILED", "retried")
    x("step.retry", "RUNNING", "retried")("step.exit", "COMPLETED", "retried")
    for suffix in ("scheduled", "restarted", "retrying", "issued"):
        x("call.error", "FAILED", suffix)(f"task.{suffix}", "RUNNING", suffix)
    x("step.exit", "COMPLETED", "not_an_opener")("call.started", "RUNNING", "not_an_opener")
    r[x.execution_id] = Rule(
        x.events,
        {
            "again": {"status": "COMPLETED", "iterations": 2, "attempts": 1},
            "retried": {"status": "COMPLETED", "iterations": 1, "attempts": 2},
            **{
                s: {"status": "RUNNING", "attempts": 2, "iterations": 1}
                for s in ("scheduled", "restarted", "retrying", "issued")
            },
            "not_an_opener": {"status": "COMPLETED", "iterations": 1},
        },
    )
    x = rule("stragglers_of_older_attempts")
    x("command.issued", "PENDING", "a", context={"attempt": 1})
    x("command.failed", "FAILED", "a", context={"attempt": 1, "error": "first"})
    x("command.issued", "PENDING", "a", context={"attempt": 2})
    x("command.started", "RUNNING", "a", context={"attempt": 2})
    x("command.completed", "COMPLETED", "a", context={"attempt": 2})
    x("command.failed", "FAILED", "a", context={"attempt": 1, "error": "late report"})
    x("call.error", "FAILED", "a", context={"attempt": 1, "error": "late call"})
    x("command.issued", "PENDING", "named", meta=cid("n1"), context={"attempt": 2})
    x("command.failed", "FAILED", "named", meta=cid("n1"), context={"attempt": 1, "error": "n"})
    x("command.issued", "PENDING", "open", context={"attempt": 3})
    x("command.completed", "COMPLETED", "open", context={"attempt": 2})
    r[x.execution_id] = Rule(
        x.events,
        {
            "a": {"status": "COMPLETED", "attempts": 2, "error": None},
            "named": {"status": "FAILED", "attempts": 2, "error": "n"},  # named by its command
            # the straggler closes nothing (and is not PENDING: the step is RUNNING)
            "open": {"status": "RUNNING", "attempts": 3, "iterations_running": 1},
        },
    )
    x = rule("terminal_is_sticky_within_a_unit")
    for step in ("a",):
        x("command.issued", "PENDING", step)("command.claimed", "RUNNING", step)
        x("call.done", "COMPLETED", step)("step.exit", "COMPLETED", step)
        x("command.completed", "RUNNING", step)  # arrives last, as in real traces
    x("call.done", "COMPLETED", "same_attempt", context={"attempt": 1})
    x("call.progress", "RUNNING", "same_attempt", context={"attempt": 1})
    x("call.done", "COMPLETED", "later_terminal")("call.error", "FAILED", "later_terminal")
    r[x.execution_id] = Rule(
        x.events,
        {
            "a": {
                "status": "COMPLETED",
                "finished_at": t(4),
                "last_event_type": "command.completed",
            },
            "same_attempt": {"status": "COMPLETED", "attempts": 1},
            "later_terminal": {"status": "FAILED"},
        },
    )
    x = rule("closers_imply_their_status")
    x("command.issued", "PENDING", "completed")("command.completed", "RUNNING", "completed")
    x("command.issued", "PENDING", "failed")
    x("command.failed", "RUNNING", "failed", context={"error": "exit 3"})
    x("command.issued", "PENDING", "cancelled")("command.cancelled", "RUNNING", "cancelled")
    x("command.issued", "PENDING", "kept")("call.error", "FAILED", "kept", context={"error": "k"})
    x("command.completed", "RUNNING", "kept")
    r[x.execution_id] = Rule(
        x.events,
        {
            "completed": {"status": "COMPLETED"},
            "failed": {"status": "FAILED", "error": "exit 3"},
            "cancelled": {"status": "CANCELLED"},
            "kept": {"status": "FAILED", "error": "k"},
        },
    )
    x = rule("parallel_iterations")
    for c in ("c1", "c2", "c3"):
        x("command.issued", "PENDING", "fan", at=1, meta=cid(c))
    for c in ("c1", "c2", "c3"):
        x("command.claimed", "RUNNING", "fan", meta=cid(c))
    x("command.completed", "COMPLETED", "fan", meta=cid("c2"))
    x("command.completed", "COMPLETED", "fan", meta=cid("c1"))
    x("command.issued", "PENDING", "fifo", at=20)("command.issued", "PENDING", "fifo", at=20)
    x("command.started", "RUNNING", "fifo", at=21)
    x("command.completed", "RUNNING", "fifo", at=22)("command.completed", "RUNNING", "fifo", at=23)
    r[x.execution_id] = Rule(
        x.events,
        {
            "fan": {
                "status": "RUNNING",
                "iterations": 3,
                "iterations_completed": 2,
                "iterations_running": 1,
                "attempts": 1,
                "finished_at": None,
            },
            "fifo": {"status": "COMPLETED", "iterations": 2, "attempts": 1},
        },
        {"open_units": 1, "settled": False, "steps_running": 1},
    )
    x = rule("a_failed_iteration_is_not_erased")
    x("command.issued", "PENDING", "loop", meta=cid("c1"))
    x("command.issued", "PENDING", "loop", meta=cid("c2"))
    x("command.failed", "FAILED", "loop", meta=cid("c1"), context={"error": "c1 broke"})
    x("command.completed", "COMPLETED", "loop", meta=cid("c2"))
    r[x.execution_id] = Rule(
        x.events,
        {
            "loop": {
                "status": "FAILED",
                "error": "c1 broke",
                "iterations": 2,
                "iterations_failed": 1,
                "iterations_completed": 1,
                "finished_at": t(3),
            }
        },
        {"error": "c1 broke", "steps_failed": 1},
    )
    x = rule("the_first_failed_iteration_gives_the_error")
    x("command.issued", "PENDING", "loop", meta=cid("c1"))
    x("command.issued", "PENDING", "loop", meta=cid("c2"))
    x("command.failed", "FAILED", "loop", meta=cid("c2"), context={"error": "c2 first"})
    x("command.failed", "FAILED", "loop", meta=cid("c1"), context={"error": "c1 later"})
    r[x.execution_id] = Rule(
        x.events, {"loop": {"status": "FAILED", "error": "c2 first", "iterations_failed": 2}}
    )
    x = rule("loop_iterations_by_index")
    loop = {"loop_event_id": "L1"}
    x("command.issued", "PENDING", "each", meta=cid("i0", loop_iteration_index=0, **loop))
    x("command.issued", "PENDING", "each", meta=cid("i1", loop_iteration_index=1, **loop))
    x("command.failed", "FAILED", "each", meta=cid("i0"), context={"error": "i0"})
    x("command.completed", "COMPLETED", "each", meta=cid("i1"))
    x("command.issued", "PENDING", "each", meta=cid("i0b", loop_iteration_index=0, **loop))
    x("command.completed", "COMPLETED", "each", meta=cid("i0b"))
    r[x.execution_id] = Rule(
        x.events,
        {
            "each": {
                "status": "COMPLETED",
                "iterations": 2,
                "attempts": 2,
                "iterations_completed": 2,
                "iterations_failed": 0,
            }
        },
    )
    x = rule("errors_from_every_source")
    x("step.exit", "FAILED", "context", context={"error": "c"}, meta={"error": "m"})
    x("step.exit", "FAILED", "meta", meta={"error": {"code": 7, "message": "m"}})
    x("step.exit", "FAILED", "top_level", error="top")
    x("step.exit", "FAILED", "result", result={"error": "r"})
    x("step.exit", "FAILED", "result_context", result={"context": {"error": "rc"}})
    x("step.exit", "FAILED", "none")
    r[x.execution_id] = Rule(
        x.events,
        {
            "context": {"error": "c"},
            "meta": {"error": '{"code": 7, "message": "m"}'},
            "top_level": {"error": "top"},
            "result": {"error": "r"},
            "result_context": {"error": "rc"},
            "none": {"error": None, "status": "FAILED"},
        },
        {"error": "c", "steps_failed": 6},
    )
    x = rule("error_inheritance")
    x("step.enter", "RUNNING", "kept")
    x("call.error", "error", "kept", context={"error": "duplicate key"})
    x("step.exit", "FAILED", "kept")
    x("call.error", "FAILED", "new_attempt", context={"error": "boom", "attempt": 1})
    x("step.exit", "FAILED", "new_attempt", context={"attempt": 2})
    x("call.error", "FAILED", "replaced", context={"error": "first"})
    x("step.exit", "FAILED", "replaced", context={"error": "second"})
    r[x.execution_id] = Rule(
        x.events,
        {
            "kept": {"status": "FAILED", "error": "duplicate key", "finished_at": t(2)},
            "new_attempt": {"status": "FAILED", "error": None, "attempts": 2},
            "replaced": {"error": "second"},
        },
    )
    x = rule("cancelled_execution")
    x("playbook_started", "STARTED", "tests/playbooks/long")
    x("command.issued", "PENDING", "running", meta=cid("r1"))
    x("command.started", "RUNNING", "running", meta=cid("r1"))
    x("step.enter", "RUNNING", "done")("step.exit", "COMPLETED", "done")
    x("playbook_cancelled", "CANCELLED", "playbook", at=10)
    r[x.execution_id] = Rule(
        x.events,
        {
            "running": {
                "status": "CANCELLED",
                "finished_at": t(10),
                "iterations_running": 0,
                "iterations": 1,
            },
            "done": {"status": "COMPLETED", "finished_at": t(4)},
        },
        {
            "status": "CANCELLED",
            "finished_at": t(10),
            "settled": True,
            "open_units": 0,
            "steps_running": 0,
            "playbook": "tests/playbooks/long",
            "error": None,
        },
    )
    x = rule("a_later_end_undoes_the_cancel")
    x("command.issued", "PENDING", "running", meta=cid("r1"))
    x("command.started", "RUNNING", "running", meta=cid("r1"))
    x("execution.cancelled", "CANCELLED", "")
    x("playbook_failed", "FAILED", "p", error="engine gave up")
    r[x.execution_id] = Rule(
        x.events,
        {"running": {"status": "RUNNING", "iterations_running": 1}},
        {"status": "FAILED", "error": "engine gave up", "settled": False, "open_units": 1},
    )
    x = rule("pending_before_work")
    x("command.issued", "PENDING", "a")("command.issued", "QUEUED", "b")
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "PENDING"}, "b": {"status": "PENDING"}},
        {"status": "PENDING", "open_units": 2, "settled": False},
    )
    x = rule("claimed_work_runs")
    x("command.issued", "PENDING", "a")("command.claimed", "CLAIMED", "a")
    r[x.execution_id] = Rule(x.events, {"a": {"status": "RUNNING"}}, {"status": "RUNNING"})
    x = rule("events_before_the_first_command")
    x("step.enter", "PENDING", "a")("command.issued", "PENDING", "a")
    x("step.enter", "RUNNING", "b")("command.issued", "PENDING", "b")
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "PENDING", "iterations": 1}, "b": {"status": "RUNNING"}},
    )
    x = rule("only_bookkeeping")
    x("checkpoint.committed", "OK", "checkpointer")
    r[x.execution_id] = Rule(
        x.events,
        {},
        {"status": "PENDING", "last_progress_at": None, "step_count": 0, "settled": True},
    )
    x = rule("stalled")  # settled work, then only checkpoint heartbeats
    x("playbook.initialized", "initialized", "tests/playbooks/stall")
    x("command.issued", "PENDING", "a")("command.completed", "COMPLETED", "a")
    for at in (60, 120, 180):
        x("checkpoint.committed", "OK", "checkpointer", at=at)
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "COMPLETED"}},
        {
            "status": "RUNNING",
            "settled": True,
            "open_units": 0,
            "last_progress_at": t(2),
            "last_event_at": t(180),
            "finished_at": None,
        },
    )
    for name, ctx, meta, extra, parent in (
        ("parent_from_context", {"parent_execution_id": 386072706271334400}, None, {}, None),
        ("parent_from_meta", {}, {"parent_execution_id": "p-meta"}, {}, "p-meta"),
        ("parent_top_level", {}, None, {"parent_execution_id": "p-top"}, "p-top"),
        (
            "parent_context_first",
            {"parent_execution_id": "p1"},
            {"parent_execution_id": "p2"},
            {},
            "p1",
        ),
    ):
        x = rule(name)
        x("playbook.started", "STARTED", "ingress", context=ctx, meta=meta, **extra)
        r[x.execution_id] = Rule(
            x.events,
            {},
            {"parent_execution_id": parent or "386072706271334400", "playbook": None},
        )
    x = rule("playbook_names")
    x("playbook.started", "STARTED", "ingress", context={"playbook": "./fail_pb.yaml"})
    x("playbook_cancelled", "CANCELLED", "playbook")
    x("workflow.started", "STARTED", "flows/other")
    r[x.execution_id] = Rule(x.events, {}, {"playbook": "./fail_pb.yaml"})
    x = rule("playbook_from_the_step")
    x("playbook_started", "STARTED", "tests/pb/b")("playbook_completed", "COMPLETED", "tests/pb/a")
    r[x.execution_id] = Rule(x.events, {}, {"playbook": "tests/pb/a", "status": "COMPLETED"})
    x = rule("execution_error_from_the_first_failed_step")
    x("step.exit", "FAILED", "b", at=5, context={"error": "b-err"})
    x("step.exit", "FAILED", "B", at=5, context={"error": "B-err"})  # "B" < "b"
    x("step.exit", "FAILED", "a", at=6, context={"error": "a-err"})
    x("playbook.failed", "FAILED", "p", at=7)
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "FAILED"}, "b": {"status": "FAILED"}, "B": {"status": "FAILED"}},
        {"status": "FAILED", "error": "B-err", "finished_at": t(7)},
    )
    x = rule("completed_execution_has_no_step_error")
    x("step.exit", "FAILED", "a", context={"error": "recovered from"})
    x("playbook.completed", "COMPLETED", "p")
    r[x.execution_id] = Rule(
        x.events, {"a": {"status": "FAILED"}}, {"status": "COMPLETED", "error": None}
    )
    x = rule("the_last_terminal_lifecycle_event_wins")
    x("playbook.failed", "FAILED", "p", at=1, context={"error": "first"})
    x("playbook.completed", "COMPLETED", "p", at=2)
    x("playbook.started", "STARTED", "p", at=3)
    r[x.execution_id] = Rule(x.events, {}, {"status": "COMPLETED", "finished_at": t(2)})
    x = rule("subscription_listener")
    for status in ("REGISTERED", "ACTIVE", "DRAINING", "DEACTIVATED"):
        x("subscription.lifecycle", status, "ingress")
    x("subscription.message.received", "RECEIVED", "ingress")
    r[x.execution_id] = Rule(
        x.events, {}, {"status": "COMPLETED", "finished_at": t(3), "step_count": 0}
    )
    return r


RULES = rules()


@pytest.fixture(scope="module")
def rule_surfaces(server_url: str, template_db: str) -> Iterator[dict[str, Answer]]:
    """Every rule's trace stored in one database (in two batches, projected in between with
    small chunks), read from every SQL surface."""
    events = [ev for rule in RULES.values() for ev in rule.events]

    async def run(url: str) -> dict[str, Answer]:
        from projector.projection import Projector

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await insert_events(conn, events[::2])
            await Projector(url, max_events=3).once()
            await insert_events(conn, events[1::2])
            return await every_surface(conn, url, events, max_events=7)

    with fresh_database(server_url, template_db) as url:
        yield asyncio.run(run(url))


def facts(answer: Answer, execution_id: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    steps, executions = answer
    return (
        dict(vars(executions[execution_id])),
        {s: dict(vars(v)) for (x, s), v in steps.items() if x == execution_id},
    )


@pytest.mark.parametrize("name", sorted(RULES))
def test_rule(rule_surfaces: dict[str, Answer], name: str) -> None:
    rule = RULES[name]
    python = fold_all(rule.events)
    for surface, answer in [("python", python), *rule_surfaces.items()]:
        execution, steps = facts(answer, name)
        assert set(steps) == set(rule.steps), surface
        for step, expected in rule.steps.items():
            assert {k: steps[step][k] for k in expected} == expected, (surface, step)
        assert {k: execution[k] for k in rule.execution} == rule.execution, surface
        assert facts(answer, name) == facts(python, name), surface
    assert set(rule_surfaces) == set(SURFACES)


# --- the SQL fold is total ---------------------------------------------------------------------

#: Rows any producer (or a hand-written INSERT) can store, at every edge the values have. None of
#: them may make a view, a function, the projector or the rebuild raise.
EXTREME_ROWS = r"""
INSERT INTO noetl.event (execution_id, event_id, event_type, step, status, created_at, context,
                         meta)
VALUES
  ('edge', '1', 'call.error', 's', 'FAILED', '2026-01-01Z', '{"attempt": 2147483647}', NULL),
  ('edge', '2', 'step.enter', 's', 'RUNNING', '2026-01-01 00:00:01Z', '{}', NULL),
  ('edge', '3', 'step.exit', 's', 'FAILED', '2026-01-01 00:00:02Z', '{"attempt": 2147483648}',
   '{"attempt": -2147483649, "attempts": 2147483646}'),
  ('edge', '4', 'command.issued', 'c', 'PENDING', '2026-01-01Z', '{"attempt": 1e400}',
   '{"attempts": 2147483647, "command_id": {"nested": [1, 2]}}'),
  ('edge', '5', 'command.issued', 'c', 'PENDING', '2026-01-01Z', '[1, 2, 3]',
   '{"attempt": 2147483647, "loop_iteration_index": 1e30, "loop_event_id": [true]}'),
  ('edge', '6', 'command.issued', 'c', 'PENDING', '2026-01-01Z', '"text"', '[1, 2]'),
  ('edge', '7', 'command.failed', 'c', NULL, '2026-01-01Z', '7', '"meta is text"'),
  ('edge', '8', 'command.completed', 'c', 'COMPLETED', '2026-01-01Z', 'null', 'null'),
  ('edge', '9', 'step.retry', 's', NULL, '2026-01-01 00:00:03Z', '{}', '{"attempts": 0}'),
  ('edge', '10', 'playbook_failed', 'playbook', 'FAILED', '2026-01-01 00:00:04Z',
   jsonb_build_object('error', repeat('e', 1000000)),
   jsonb_build_object('parent_execution_id', repeat(md5('x'), 400))),
  ('edge', '11', '', '', '', '2026-01-01Z', '{}', NULL),
  ('edge', '12', repeat('t', 10240), repeat('s', 10240), repeat(' ', 10240), '2026-01-01Z',
   jsonb_build_object('playbook', repeat('p', 10240)), NULL),
  ('early', '1', 'step.enter', 'a', 'RUNNING', '4713-01-01 00:00:00+00 BC', '{}', NULL),
  ('early', '2', 'step.exit', 'a', 'COMPLETED', '294276-12-31 23:59:59.999999+00', '{}', NULL),
  ('early', '3', 'playbook.completed', 'p', 'ok', '294276-12-31 23:59:59.999999+00', '{}', NULL),
  (repeat('x', 10240), repeat('i', 10240), 'call.done', 'a:task_sequence', 'ok', '2026-01-01Z',
   '{}', NULL)
"""
DEEP = "(repeat('[', 10000) || repeat(']', 10000))::jsonb"


async def test_the_sql_fold_is_total(aconn: Conn, database_url: str) -> None:
    from projector.projection import Projector, connect, rebuild

    await aconn.execute(EXTREME_ROWS)
    await aconn.execute(
        "INSERT INTO noetl.event (execution_id, event_id, event_type, step, status, created_at, "
        f"context, meta) VALUES ('deep', '1', 'call.error', 's', 'FAILED', now(), "
        f"jsonb_build_object('error', {DEEP}), jsonb_build_object('deep', {DEEP}))"
    )
    read = [  # timestamps as text: years past 9999 are no Python datetimes
        "SELECT count(*), sum(attempts), max(length(error)), max(finished_at::text) "
        "FROM noetl.step_status",
        "SELECT count(*), max(length(error)), max(finished_at::text), bool_and(settled) "
        "FROM noetl.execution_status",
        "SELECT count(*) FROM noetl.event e CROSS JOIN LATERAL "
        "noetl.step_status_of(e.execution_id, noetl.step_name(e.step))",
        "SELECT count(*) FROM (SELECT DISTINCT execution_id FROM noetl.event) e "
        "CROSS JOIN LATERAL noetl.execution_status_of(e.execution_id)",
    ]
    for text in read:
        await (await aconn.execute(text)).fetchall()  # type: ignore[arg-type]
    assert await Projector(database_url).once() == 17
    conn = await connect(database_url)
    try:
        result = await rebuild(conn)
    finally:
        await conn.close()
    assert result.executions == 4
    cur = await aconn.execute(
        "SELECT execution_id, left(step, 3), status, attempts FROM noetl.step_state "
        "WHERE execution_id IN ('edge', 'early', 'deep') ORDER BY 1, 2"
    )
    assert await cur.fetchall() == [
        ("deep", "s", "FAILED", 1),
        ("early", "a", "COMPLETED", 1),
        ("edge", "c", "RUNNING", 2147483647),  # the command labelled by an object is open
        ("edge", "s", "FAILED", 2147483647),  # the retry of attempt 2**31 - 1 is that attempt
        ("edge", "sss", "RUNNING", 1),  # a 10 KB step name, a 10 KB event type
    ]
    cur = await aconn.execute(
        "SELECT execution_id, status, length(error), length(parent_execution_id), "
        "finished_at::text FROM noetl.execution_state ORDER BY 1 LIMIT 3"
    )
    assert await cur.fetchall() == [
        ("deep", "RUNNING", 20000, None, None),
        ("early", "COMPLETED", None, None, "294276-12-31 23:59:59.999999+00"),
        ("edge", "FAILED", 1000000, 12800, "2026-01-01 00:00:04+00"),
    ]
