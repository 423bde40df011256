"""The edges of the status rules that `test_fold.py`'s traces leave to the property test, pinned.

Each rule is a small trace (one execution) with the answer every surface must give: the Python
fold, the views, the tables after `projector project` (two batches, small chunks),
`step_status_of` / `execution_status_of` and the rebuilt tables (`tests.test_fold.RULES`'
machinery). Each one is chosen so that one plausible one-line bug changes the answer:

* every trimmed character (space, tab, CR, LF) on either side of a terminal status, and every
  alias of the status table in two spellings, through the views rather than the scalar function;
* each tie-break where it decides something: terminal before non-terminal in command mode (a
  failure and its retry's ``command.issued`` in one microsecond), event ids by code point between
  two terminal lifecycle events, the lower iteration number between two iterations failing at one
  instant;
* the precedence of explicit attempts with all three sources present and disagreeing;
* stickiness within an attempt, from each source of explicit attempt, in both modes, open and
  closed units, and what a *higher* attempt does instead (opens, or sets the status);
* an empty step counting for the execution only.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from projector import migrate
from projector.fold import STATUS_TABLE, fold_all
from projector.projection import Projector
from tests.conftest import fresh_database, with_dbname
from tests.eventlog import SURFACES, Answer, every_surface, insert_events
from tests.test_fold import TRIMMED, Rule, Trace, cid, facts, t


def rules() -> dict[str, Rule]:
    r: dict[str, Rule] = {}

    x = Trace("edge_every_trimmed_character")
    expected: dict[str, dict[str, Any]] = {}
    for n, c in enumerate(TRIMMED):
        for side, raw, status in (
            ("left", c + "failed", "FAILED"),
            ("right", "Completed" + c, "COMPLETED"),
            ("both", c + "CANCELED" + c, "CANCELLED"),
            ("twice", c + c + "skipped" + c + c, "SKIPPED"),
        ):
            step = f"c{n}_{side}"
            x("step.enter", "RUNNING", step, at=0)("step.exit", raw, step, at=1)
            expected[step] = {"status": status, "iterations_running": 0, "finished_at": t(1)}
    r[x.execution_id] = Rule(x.events, expected)

    x = Trace("edge_every_alias")
    expected = {}
    for n, (raw, status) in enumerate(sorted(STATUS_TABLE.items())):
        step = f"alias_{n:02d}"
        x("call.progress", raw if n % 2 else raw.lower(), step)  # not an opener, not a closer
        expected[step] = {
            "status": status,
            "iterations_running": int(status in ("PENDING", "RUNNING")),
        }
    r[x.execution_id] = Rule(x.events, expected)

    x = Trace("edge_tie_failure_and_retry_issue")  # failure first: the issue is its retry
    x("command.issued", "PENDING", "a", at=0, meta=cid("k1"))
    x("command.failed", "FAILED", "a", at=1, meta=cid("k1"), context={"error": "try 1"})
    x("command.issued", "PENDING", "a", at=1)
    x("command.completed", "COMPLETED", "a", at=2)
    r[x.execution_id] = Rule(
        x.events,
        {"a": {"status": "COMPLETED", "attempts": 2, "iterations": 1, "iterations_failed": 0}},
    )

    x = Trace("edge_tie_lifecycle_by_event_id")  # "B" < "a": the completion is the last
    x("playbook.completed", "COMPLETED", "p", at=1, event_id="a")
    x("playbook.failed", "FAILED", "p", at=1, event_id="B", context={"error": "b"})
    r[x.execution_id] = Rule(
        x.events, {}, {"status": "COMPLETED", "error": None, "finished_at": t(1)}
    )

    x = Trace("edge_tie_iterations_failing_at_once")  # the lower iteration gives the error
    x("command.issued", "PENDING", "loop", at=0, meta=cid("k1"))
    x("command.issued", "PENDING", "loop", at=1, meta=cid("k2"))
    x(
        "command.failed",
        "FAILED",
        "loop",
        at=5,
        event_id="y",
        meta=cid("k1"),
        context={"error": "k1"},
    )
    x(
        "command.failed",
        "FAILED",
        "loop",
        at=5,
        event_id="x",
        meta=cid("k2"),
        context={"error": "k2"},
    )
    r[x.execution_id] = Rule(
        x.events,
        {"loop": {"status": "FAILED", "error": "k1", "iterations_failed": 2, "finished_at": t(5)}},
        {"error": "k1"},
    )

    x = Trace("edge_attempt_from_all_three_sources")
    both = {"context": {"attempt": 2}, "meta": {"attempt": 4, "attempts": 6}}
    x("step.enter", "RUNNING", "all", **both)("step.exit", "COMPLETED", "all", **both)
    meta_only = {"meta": {"attempt": 3, "attempts": 6}}
    x("step.enter", "RUNNING", "meta", **meta_only)("step.exit", "COMPLETED", "meta", **meta_only)
    zero = {"context": {"attempt": 0}, "meta": {"attempt": 0, "attempts": 4}}
    x("step.enter", "RUNNING", "zero", **zero)("step.exit", "COMPLETED", "zero", **zero)
    r[x.execution_id] = Rule(
        x.events,
        {
            "all": {"attempts": 2, "status": "COMPLETED", "iterations": 1},
            "meta": {"attempts": 3, "status": "COMPLETED", "iterations": 1},
            "zero": {"attempts": 5, "status": "COMPLETED", "iterations": 1},
        },
    )

    x = Trace("edge_sticky_within_an_attempt")
    for step, source in (
        ("ctx", {"context": {"attempt": 2}}),
        ("meta", {"meta": {"attempt": 2}}),
        ("zero", {"meta": {"attempts": 1}}),
        ("both", {"context": {"attempt": 2}, "meta": {"attempt": 5}}),
    ):
        x("call.done", "COMPLETED", f"plain_{step}", **source)
        x("call.progress", "RUNNING", f"plain_{step}", **source)
        meta = {**source.get("meta", {}), "command_id": "k1"}
        x("command.issued", "PENDING", f"cmd_{step}", context=source.get("context"), meta=meta)
        x("command.completed", "COMPLETED", f"cmd_{step}", context=source.get("context"), meta=meta)
        x("call.progress", "RUNNING", f"cmd_{step}", context=source.get("context"), meta=meta)
    x("command.issued", "PENDING", "cmd_open", meta=cid("k1"), context={"attempt": 1})
    x("call.error", "FAILED", "cmd_open", meta=cid("k1"), context={"attempt": 1, "error": "e"})
    x("call.progress", "RUNNING", "cmd_open", meta=cid("k1"), context={"attempt": 1})
    x("command.completed", "RUNNING", "cmd_open", meta=cid("k1"))
    sticky = {"status": "COMPLETED", "attempts": 2, "iterations": 1, "iterations_running": 0}
    r[x.execution_id] = Rule(
        x.events,
        {
            **{f"{mode}_{s}": sticky for mode in ("plain", "cmd") for s in ("ctx", "meta", "zero")},
            "plain_both": sticky,
            "cmd_both": sticky,
            # the unit stayed FAILED through the same attempt's RUNNING: its closer keeps it
            "cmd_open": {"status": "FAILED", "error": "e", "attempts": 1},
        },
    )

    x = Trace("edge_a_higher_attempt_is_not_sticky")
    x("call.done", "COMPLETED", "plain", context={"attempt": 1})
    x("call.progress", "RUNNING", "plain", context={"attempt": 2})  # a new unit of attempt 2
    x("command.issued", "PENDING", "open", meta=cid("k1"), context={"attempt": 1})
    x("call.error", "FAILED", "open", meta=cid("k1"), context={"attempt": 1, "error": "e"})
    x("call.progress", "RUNNING", "open", meta=cid("k1"), context={"attempt": 2})
    x("command.completed", "RUNNING", "open", meta=cid("k1"))
    x("command.issued", "PENDING", "closer", meta=cid("k1"), context={"attempt": 1})
    x("call.error", "FAILED", "closer", meta=cid("k1"), context={"attempt": 1, "error": "e"})
    x("command.completed", "RUNNING", "closer", meta=cid("k1"), context={"attempt": 2})
    x("command.issued", "PENDING", "closed", meta=cid("k1"), context={"attempt": 1})
    x("command.completed", "COMPLETED", "closed", meta=cid("k1"))
    x("call.progress", "RUNNING", "closed", meta=cid("k1"), context={"attempt": 2})
    r[x.execution_id] = Rule(
        x.events,
        {
            "plain": {"status": "RUNNING", "attempts": 2, "iterations": 1, "iterations_running": 1},
            "open": {"status": "COMPLETED", "attempts": 2, "error": None},
            "closer": {"status": "COMPLETED", "attempts": 2, "error": None},
            # a closed command stays closed: the attempt rises, the status stays
            "closed": {"status": "COMPLETED", "attempts": 2, "iterations_running": 0},
        },
    )

    x = Trace("edge_a_higher_attempt_ends_an_open_plain_unit")
    x("step.enter", "RUNNING", "s", context={"attempt": 1})
    x("call.error", "FAILED", "s", context={"attempt": 2, "error": "e2"})
    r[x.execution_id] = Rule(
        x.events,
        {
            "s": {
                "status": "FAILED",
                "attempts": 2,
                "iterations": 1,
                "error": "e2",
                "iterations_running": 0,
            }
        },
    )

    x = Trace("edge_an_unlabelled_closer_closes_the_latest_command")
    x("command.issued", "PENDING", "a", meta=cid("k1"))  # labelled: no unlabelled unit is open
    x("command.completed", "COMPLETED", "a")
    r[x.execution_id] = Rule(
        x.events, {"a": {"status": "COMPLETED", "iterations": 1, "iterations_running": 0}}
    )

    x = Trace("edge_empty_step_counts_for_the_execution_only")
    x("loop.item", "RUNNING", "")("call.done", "COMPLETED", "")
    r[x.execution_id] = Rule(
        x.events,
        {},
        {"status": "RUNNING", "step_count": 0, "event_count": 2, "last_progress_at": t(1)},
    )
    return r


RULES = rules()


@pytest.fixture(scope="module")
def edge_surfaces(server_url: str, template_db: str) -> Iterator[dict[str, Answer]]:
    events = [ev for rule in RULES.values() for ev in rule.events]

    async def run(url: str) -> dict[str, Answer]:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await insert_events(conn, events[1::2])
            await Projector(url, max_events=3).once()
            await insert_events(conn, events[::2])
            return await every_surface(conn, url, events, max_events=5)

    with fresh_database(server_url, template_db) as url:
        yield asyncio.run(run(url))


@pytest.mark.parametrize("name", sorted(RULES))
def test_edge_rule(edge_surfaces: dict[str, Answer], name: str) -> None:
    rule = RULES[name]
    python = fold_all(rule.events)
    assert set(edge_surfaces) == set(SURFACES)
    for surface, answer in [("python", python), *edge_surfaces.items()]:
        execution, steps = facts(answer, name)
        assert set(steps) == set(rule.steps), surface
        for step, expected in rule.steps.items():
            assert {k: steps[step][k] for k in expected} == expected, (surface, step)
        assert {k: execution[k] for k in rule.execution} == rule.execution, surface
        assert facts(answer, name) == facts(python, name), surface


#: Rules whose answer depends on ordering text by code point (``COLLATE "C"`` in SQL).
CODE_POINT_RULES = (
    "tie_event_id_by_code_point",
    "tie_event_id_non_ascii",
    "execution_error_from_the_first_failed_step",
)


@pytest.mark.slow  # a database migrated from scratch
def test_code_point_order_whatever_the_database_collation(server_url: str) -> None:
    """The test server's databases are C.UTF-8, where code-point order is the default: there, a
    comparison that lost its ``COLLATE "C"`` still passes. A database with an ICU collation
    (``a`` < ``B``, ``é`` < ``z``), as many deployments have, must give the same answers."""
    from tests.test_fold import RULES as FOLD_RULES

    rules = {**{n: FOLD_RULES[n] for n in CODE_POINT_RULES}, **RULES}
    events = [ev for rule in rules.values() for ev in rule.events]
    name = f"projector_icu_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(
            sql.SQL(
                "CREATE DATABASE {} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
            ).format(sql.Identifier(name))
        )
    url = with_dbname(server_url, name)
    try:
        migrate.upgrade(url)

        async def run() -> dict[str, Answer]:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                cur = await conn.execute("SELECT 'a' < 'B', 'é' < 'z'")
                assert await cur.fetchone() == (True, True)  # not code-point order
                await insert_events(conn, events)
                return await every_surface(conn, url, events)

        surfaces = asyncio.run(run())
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
    python = fold_all(events)
    for surface, answer in surfaces.items():
        for rule_name in rules:
            assert facts(answer, rule_name) == facts(python, rule_name), (surface, rule_name)
