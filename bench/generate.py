"""Server-side generator of a large, realistic history (scenarios 7 and 8).

`INSERT ... SELECT` from `generate_series`, in chunks of executions so progress can be shown. Each
execution: `playbook.initialized`, `workflow.initialized`, 10 steps of 7 step events
(`step.enter` PENDING, `command.issued` PENDING, `command.claimed` RUNNING, `command.started`
STARTED, `call.done` COMPLETED, `step.exit` COMPLETED, then `command.completed` RUNNING arriving
last, as in real traces), and `playbook.completed` - 73 events. One execution in 20 fails at its
last step (`call.error` / `step.exit` FAILED, `command.failed`, `playbook.failed`); one in 50 is
still running (no terminal event). Executions start evenly over the last 120 days (five monthly
partitions); ids are snowflake-like integers as text; contexts are ~120 bytes of JSON.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg
from psycopg import sql

from projector import migrate

from .scratch import with_dbname

EVENTS_PER_EXECUTION = 73
#: Execution ids are BASE_EXECUTION + 0, 1, 2, ... as text.
BASE_EXECUTION = 7_000_000_000_000_000_000
DAYS = 120

_OK = [
    ("step.enter", "PENDING"),
    ("command.issued", "PENDING"),
    ("command.claimed", "RUNNING"),
    ("command.started", "STARTED"),
    ("call.done", "COMPLETED"),
    ("step.exit", "COMPLETED"),
    ("command.completed", "RUNNING"),
]
_FAILED = [
    ("step.enter", "PENDING"),
    ("command.issued", "PENDING"),
    ("command.claimed", "RUNNING"),
    ("command.started", "STARTED"),
    ("call.error", "FAILED"),
    ("step.exit", "FAILED"),
    ("command.failed", "FAILED"),
]


def _pattern() -> list[tuple[str, int, str, str | None, str]]:
    """(kind, position, event_type, step, status) for the ok and the failing execution."""
    rows: list[tuple[str, int, str, str | None, str]] = []
    for kind in ("ok", "failed"):
        pos = 0
        rows.append((kind, pos, "playbook.initialized", None, "initialized"))
        rows.append((kind, pos + 1, "workflow.initialized", "workflow", "initialized"))
        pos = 2
        for step in range(10):
            events = _FAILED if kind == "failed" and step == 9 else _OK
            for event_type, status in events:
                rows.append((kind, pos, event_type, f"step_{step:02d}", status))
                pos += 1
        end = "playbook.failed" if kind == "failed" else "playbook.completed"
        rows.append((kind, pos, end, None, "failed" if kind == "failed" else "completed"))
    return rows


INSERT = """
INSERT INTO noetl.event (execution_id, event_id, event_type, step, status, created_at, context,
                         worker_id)
SELECT (%(base)s::bigint + x)::text,
       (3000000000000000000::bigint + x * 128 + p.pos)::text,
       p.event_type,
       coalesce(p.step, 'playbooks/bench/p' || (x %% 37)),
       p.status,
       %(start)s::timestamptz + (x * %(spacing)s::float8) * interval '1 second'
           + p.pos * interval '1.5 seconds' + (x %% 7) * interval '10 milliseconds',
       jsonb_build_object(
           'attempt', 1,
           'worker', 'worker-' || (x %% 8),
           'duration_ms', 100 + (x * 37 + p.pos) %% 5000,
           'result', jsonb_build_object('rows', (x * 13 + p.pos) %% 1000, 'ok', p.kind = 'ok'),
           'trace', lpad(to_hex(x), 16, '0') || lpad(to_hex(p.pos), 8, '0')),
       'worker-' || (x %% 8)
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint - 1) AS x
JOIN unnest(%(kinds)s::text[], %(positions)s::int[], %(types)s::text[], %(steps)s::text[],
            %(statuses)s::text[]) AS p(kind, pos, event_type, step, status)
  ON p.kind = CASE WHEN x %% 20 = 0 THEN 'failed' ELSE 'ok' END
WHERE NOT (x %% 50 = 1 AND p.pos = %(last)s)
ORDER BY x, p.pos
"""


def generate(
    url: str,
    events: int,
    *,
    chunk_executions: int = 20_000,
    tick: Callable[[str], None] | None = None,
) -> int:
    """Insert about `events` events; return the number of executions."""
    executions = max(1, events // EVENTS_PER_EXECUTION)
    pattern = _pattern()
    params = {
        "kinds": [r[0] for r in pattern],
        "positions": [r[1] for r in pattern],
        "types": [r[2] for r in pattern],
        "steps": [r[3] for r in pattern],
        "statuses": [r[4] for r in pattern],
        "last": EVENTS_PER_EXECUTION - 1,
        "base": BASE_EXECUTION,
        "spacing": DAYS * 86_400 / executions,
    }
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        row = conn.execute(
            "SELECT now() - make_interval(days => %s), noetl.ensure_event_partitions("
            "(date_trunc('month', now() - make_interval(days => %s)))::date, 6)",
            (DAYS, DAYS),
        ).fetchone()
        assert row is not None
        params["start"] = row[0]
        for lo in range(0, executions, chunk_executions):
            hi = min(lo + chunk_executions, executions)
            conn.execute(INSERT, {**params, "lo": lo, "hi": hi})
            if tick is not None:
                tick(f"generated {hi * EVENTS_PER_EXECUTION:,} events")
        conn.execute("VACUUM ANALYZE noetl.event")
    return executions


MARK = "COMMENT ON DATABASE {} IS {}"


def kept_history(server_url: str, name: str, template: str, events: int) -> tuple[str, int]:
    """(url, executions) of the history kept in database `name` (`--keep-history`).

    Reused when its mark (the comment on the database) names the same size and the schema is at
    the head revision; otherwise the database is made again from the migrated `template` and 0
    executions are returned (generate, then :func:`mark_history`). The database is never dropped
    by the run.
    """
    url = with_dbname(server_url, name)
    with psycopg.connect(server_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (name,),
        ).fetchone()
        if row is not None and row[0] and migrate.current(url) == migrate.head():
            size, _, executions = str(row[0]).partition(" ")
            if size == str(events) and executions.isdigit():
                return url, int(executions)
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        admin.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template)
            )
        )
    return url, 0


def mark_history(url: str, events: int, executions: int) -> None:
    """Mark the kept history as complete: `events executions` in the database's comment."""
    name = url.rsplit("/", 1)[-1].split("?", 1)[0]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            sql.SQL(MARK).format(sql.Identifier(name), sql.Literal(f"{events} {executions}"))
        )
