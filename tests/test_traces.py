"""The real noetl traces (/work/shared/traces) give what their README says, on every surface.

Each trace is stored, then read from the views, from the tables after `projector project --once`
(`Projector.once()`), after `rebuild`, from `noetl.step_status_of` / `noetl.execution_status_of`,
and from `projector status --json` run in-process. Every surface must state the README's facts
(below, copied from it), and equal the Python fold.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from projector import cli
from projector.envelope import ExecutorEvent
from projector.fold import fold_all
from tests.eventlog import Answer, every_surface, insert_new_events, trace_events

#: One surface's answer as plain dicts: executions by id, steps by (execution id, step).
Facts = tuple[dict[str, dict[str, Any]], dict[tuple[str, str], dict[str, Any]]]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass
class Trace:
    files: tuple[str, ...]
    #: The rows stored (and, loaded again, none).
    rows: int
    #: Per execution, the columns the README states.
    executions: dict[str, dict[str, Any]]
    #: Per execution, exactly its steps, and the columns the README states for each.
    steps: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    #: Per parent execution, its children and their statuses (`projector status` lists them).
    children: dict[str, dict[str, str]] = field(default_factory=dict)


DONE_ONCE = {"status": "COMPLETED", "attempts": 1, "iterations": 1}
TRACES = {
    "http_to_postgres_simple": Trace(
        ("http_to_postgres_simple.ndjson", "noetl_api_export_execution_events.json"),
        rows=60,
        executions={
            "543942402780693277": {
                "status": "COMPLETED",
                "finished_at": at("2026-01-20T11:59:21.596058"),
                "event_count": 60,
                "settled": True,
                "step_count": 8,
                "steps_completed": 8,
                "error": None,
            }
        },
        steps={
            "543942402780693277": {
                name: DONE_ONCE
                for name in (
                    "start",
                    "fetch_posts",
                    "create_pg_table",
                    "transform_and_insert",
                    "execute_inserts",
                    "verify_data",
                    "show_sample",
                    "end",
                )
            }
        },
    ),
    "pft_stall": Trace(
        ("pft_stall_606790043104968712.ndjson",),
        rows=1852,
        executions={
            "606790043104968712": {
                "status": "RUNNING",
                "settled": True,
                "open_units": 0,
                "last_progress_at": at("2026-04-17T05:03:35.976351"),
                "last_event_at": at("2026-04-17T05:09:33.019303"),
                "event_count": 1852,
                "step_count": 6,
                "finished_at": None,
            }
        },
        steps={
            "606790043104968712": {
                "start": DONE_ONCE,
                "load_next_facility": DONE_ONCE,
                "setup_facility_work": DONE_ONCE,
                "load_patients_for_assessments": {**DONE_ONCE, "iterations": 2},
                "claim_patients_for_assessments": {**DONE_ONCE, "iterations": 2},
                "fetch_assessments": {
                    **DONE_ONCE,
                    "iterations": 100,
                    "iterations_completed": 100,
                },
            }
        },
    ),
    "subscribe_ok": Trace(
        ("noetl_cli_subscribe_ok.ndjson",),
        rows=10,
        executions={
            "386072706292305920": {
                "status": "COMPLETED",
                "step_count": 0,
                "parent_execution_id": "386072706271334400",
            },
            "386072706309083136": {
                "status": "COMPLETED",
                "step_count": 0,
                "parent_execution_id": "386072706271334400",
            },
            "386072706271334400": {
                "status": "COMPLETED",
                "step_count": 0,
                "parent_execution_id": None,
            },
        },
        steps={
            "386072706292305920": {},
            "386072706309083136": {},
            "386072706271334400": {},
        },
        children={
            "386072706271334400": {
                "386072706292305920": "COMPLETED",
                "386072706309083136": "COMPLETED",
            }
        },
    ),
    "subscribe_fail": Trace(
        ("noetl_cli_subscribe_fail.ndjson",),
        rows=10,
        executions={
            "386072706470612992": {
                "status": "FAILED",
                "error": "Command failed with exit code: Some(3)",
                "step_count": 0,
                "parent_execution_id": "386072706458030080",
            },
            "386072706483195904": {
                "status": "FAILED",
                "error": "Command failed with exit code: Some(3)",
                "step_count": 0,
                "parent_execution_id": "386072706458030080",
            },
            "386072706458030080": {"status": "COMPLETED", "step_count": 0, "error": None},
        },
        steps={
            "386072706470612992": {},
            "386072706483195904": {},
            "386072706458030080": {},
        },
        children={
            "386072706458030080": {
                "386072706470612992": "FAILED",
                "386072706483195904": "FAILED",
            }
        },
    ),
    "issue305": Trace(
        ("issue305_task_sequence_active.ndjson",),
        rows=13,
        executions={
            "588817070813348433": {
                "status": "RUNNING",
                "settled": False,
                "open_units": 1,
                "step_count": 1,
            }
        },
        steps={
            "588817070813348433": {
                "fetch_adt_records": {
                    "status": "RUNNING",
                    "iterations": 2,
                    "iterations_completed": 1,
                    "iterations_running": 1,
                }
            }
        },
    ),
    "issue451": Trace(
        ("issue451_loop_midway.ndjson",),
        rows=9,
        executions={"629425647881814073": {"status": "RUNNING", "settled": False}},
        steps={
            "629425647881814073": {
                "fetch_facility": {"status": "COMPLETED", "iterations": 1},
                "load_next_facility": {
                    "status": "RUNNING",
                    "iterations": 2,
                    "iterations_completed": 1,
                    "iterations_running": 1,
                },
            }
        },
    ),
}


def as_dicts(answer: Answer) -> Facts:
    steps, executions = answer
    return (
        {k: dict(vars(v)) for k, v in executions.items()},
        {k: dict(vars(v)) for k, v in steps.items()},
    )


def check_facts(trace: Trace, answer: Facts, surface: str) -> None:
    executions, steps = answer
    for execution_id, facts in trace.executions.items():
        row = executions[execution_id]
        assert {k: row[k] for k in facts} == facts, (surface, execution_id)
    for execution_id, by_step in trace.steps.items():
        names = {s for (x, s) in steps if x == execution_id}
        assert names == set(by_step), (surface, execution_id)
        for name, facts in by_step.items():
            row = steps[(execution_id, name)]
            assert {k: row[k] for k in facts} == facts, (surface, execution_id, name)


async def database_answers(
    url: str, events: list[ExecutorEvent], trace: Trace
) -> dict[str, Answer]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        assert await insert_new_events(conn, events) == trace.rows
        assert await insert_new_events(conn, events) == 0  # the same ids again
        return await every_surface(conn, url, events)


def cli_answer(
    url: str, ids: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[Facts, dict[str, dict[str, str]]]:
    """`projector status ID --json` of each execution, timestamps read back as datetimes, and
    the child executions it lists with their statuses."""
    executions: dict[str, dict[str, Any]] = {}
    steps: dict[tuple[str, str], dict[str, Any]] = {}
    children: dict[str, dict[str, str]] = {}

    def typed(doc: dict[str, Any]) -> dict[str, Any]:
        return {
            k: datetime.fromisoformat(v) if k.endswith("_at") and isinstance(v, str) else v
            for k, v in doc.items()
        }

    for execution_id in ids:
        capsys.readouterr()
        assert cli.run(["--database-url", url, "status", execution_id, "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        for step in doc.pop("steps"):
            steps[(execution_id, step["step"])] = typed(step)
        listed = {c["execution_id"]: c["status"] for c in doc.pop("children")}
        if listed:
            children[execution_id] = listed
        parent = doc.pop("parent")
        assert (parent or {}).get("execution_id") == doc["parent_execution_id"]
        executions[execution_id] = typed(doc)
    return (executions, steps), children


@pytest.mark.parametrize("name", sorted(TRACES))
def test_trace_gives_what_its_readme_says(
    name: str, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = TRACES[name]
    events = [ev for f in trace.files for ev in trace_events(f)]
    python = fold_all(events)
    check_facts(trace, as_dicts(python), "python")
    for surface, answer in asyncio.run(database_answers(database_url, events, trace)).items():
        check_facts(trace, as_dicts(answer), surface)
        assert answer == python, surface
    answer, children = cli_answer(database_url, sorted(trace.executions), capsys)
    check_facts(trace, answer, "cli")
    assert children == trace.children


def test_export_and_ndjson_are_the_same_60_events() -> None:
    export = trace_events("noetl_api_export_execution_events.json")
    ndjson = trace_events("http_to_postgres_simple.ndjson")
    assert len(export) == 60
    assert {e.resolved_event_id() for e in export} == {e.resolved_event_id() for e in ndjson}


def test_the_http_trace_cut_after_its_first_command_is_pending(database_url: str) -> None:
    """docs/status.md's example of PENDING before work: the step, not the execution (its
    lifecycle events started it)."""
    events = trace_events("http_to_postgres_simple.ndjson")[:3]

    async def answers() -> dict[str, Answer]:
        async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
            await insert_new_events(conn, events)
            return await every_surface(conn, database_url, events)

    for surface, (steps, executions) in asyncio.run(answers()).items():
        assert {k[1]: v.status for k, v in steps.items()} == {"start": "PENDING"}, surface
        assert executions["543942402780693277"].status == "RUNNING", surface
