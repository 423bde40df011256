"""Fast exact views (issue 15): the state tables for what is projected, a fold of the rest.

`noetl.step_status` and `noetl.execution_status` used to fold the whole log on every query (79 s
for the 50 newest executions at 10M events). Now each is the UNION ALL of

* the rows of `noetl.step_state` / `noetl.execution_state` of every execution with no event at or
  above the *projection position* (`noetl.projection_position()`: the lowest position of all
  `noetl.projector_checkpoint` rows: every projector, shards included, writes the state tables),
* the fold from the log (all their events, not only the new ones) of the executions that have
  events at or above it (`noetl.unprojected_executions()`), one execution at a time,
* the fold of the whole log (`noetl.step_status_log` / `noetl.execution_status_log`, the views as
  revision 0005 made them) when there is no checkpoint row at all (the projector never ran), or
  when more than `TAIL_LIMIT` events lie at or above the lowest one (far behind): then the
  position is null.

Everything is read in the query's one snapshot, so the views equal the fold of the visible log at
every moment: a state row and the checkpoint that covers it commit together, and an event below a
checkpoint was committed before that checkpoint was written.

Indexes for the history questions of docs/cookbook.md: BRIN on `noetl.event (created_at)`, and
on the state tables by time, status and playbook.

The SQL text lives in this file, not in the package, so that this revision stays what it was. The
downgrade restores the views and functions of revision 0005.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from types import ModuleType

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _previous() -> ModuleType:
    return importlib.import_module("projector.migrations.versions.0005_status_rules")


STEP_FIELDS = (
    "execution_id, step, status, attempts, started_at, finished_at, last_event_at, "
    "last_event_type, event_count, error, iterations, iterations_completed, iterations_failed, "
    "iterations_running"
)
EXECUTION_FIELDS = (
    "execution_id, status, started_at, finished_at, last_event_at, event_count, step_count, "
    "steps_completed, steps_failed, steps_running, error, parent_execution_id, playbook, "
    "last_progress_at, open_units, settled"
)


def _but_key(fields: str, alias: str) -> str:
    return ", ".join(f"{alias}.{f}" for f in fields.split(", ")[1:])


DROP_OLD = r"""
DROP FUNCTION noetl.execution_status_of(text);
DROP VIEW noetl.execution_status;
DROP VIEW noetl.execution_steps;
DROP FUNCTION noetl.step_status_of(text, text);
DROP VIEW noetl.step_status;
"""


def _log_views(step_view: str, execution_view: str) -> str:
    """Revision 0005's folds of the log under the given names, and the per-key functions."""
    old = _previous()
    return f"""
CREATE VIEW noetl.{step_view} AS
SELECT {old.STEP_COLUMNS}
FROM (
    SELECT e.execution_id,
           noetl.step_name(e.step) AS step,
           {old.STEP_AGGREGATES}
    FROM noetl.event e
    WHERE noetl.is_step_event(e.event_type, e.step)
    GROUP BY e.execution_id, noetl.step_name(e.step)
) g
LEFT JOIN noetl.execution_end x ON x.execution_id = g.execution_id AND x.status = 'CANCELLED';

CREATE FUNCTION noetl.step_status_of(p_execution_id text, p_step text)
RETURNS SETOF noetl.{step_view}
LANGUAGE sql STABLE ROWS 1 AS $fn$
SELECT {old.STEP_COLUMNS}
FROM (
    SELECT p_execution_id AS execution_id,
           p_step AS step,
           {old.STEP_AGGREGATES}
    FROM noetl.event e
    WHERE e.execution_id = p_execution_id
      AND e.step IN (p_step, p_step || ':task_sequence')
      AND noetl.step_name(e.step) = p_step
      AND noetl.is_step_event(e.event_type, e.step)
) g
LEFT JOIN noetl.execution_end x ON x.execution_id = p_execution_id AND x.status = 'CANCELLED'
WHERE g.event_count > 0
$fn$;

CREATE VIEW noetl.execution_steps AS
SELECT execution_id,
       count(*) AS step_count,
       count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
       count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
       count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running,
       sum(iterations_running) AS open_units,
       (array_agg(error ORDER BY finished_at, step COLLATE "C")
            FILTER (WHERE status = 'FAILED'))[1] AS first_error
FROM noetl.{step_view}
GROUP BY execution_id;

CREATE VIEW noetl.{execution_view} AS
SELECT a.execution_id,
       coalesce(x.status, CASE WHEN a.nothing_started THEN 'PENDING' ELSE 'RUNNING' END)
           AS status,
       a.started_at,
       x.finished_at,
       a.last_event_at,
       a.event_count,
       coalesce(s.step_count, 0) AS step_count,
       coalesce(s.steps_completed, 0) AS steps_completed,
       coalesce(s.steps_failed, 0) AS steps_failed,
       coalesce(s.steps_running, 0) AS steps_running,
       coalesce(x.error, CASE WHEN x.status IS DISTINCT FROM 'COMPLETED' THEN s.first_error END)
           AS error,
       a.parent_execution_id,
       a.playbook,
       a.last_progress_at,
       coalesce(s.open_units, 0) AS open_units,
       coalesce(s.steps_running, 0) = 0 AS settled
FROM noetl.execution_activity a
LEFT JOIN noetl.execution_end x ON x.execution_id = a.execution_id
LEFT JOIN noetl.execution_steps s ON s.execution_id = a.execution_id;

CREATE FUNCTION noetl.execution_status_of(p_execution_id text)
RETURNS SETOF noetl.{execution_view}
LANGUAGE sql STABLE ROWS 1
SET search_path = noetl, pg_catalog AS $fn$
SELECT * FROM noetl.{execution_view} WHERE execution_id = p_execution_id
$fn$;
"""


#: More unprojected events than this and the views fold the whole log instead of one execution
#: at a time (a projector far behind, or just started from nothing): one at a time costs about
#: five times as much per event as the grouped fold.
TAIL_LIMIT = 100_000

# The new pieces. The SET clauses keep the SQL functions from being inlined: each stays one
# call per key, planned with its key as a parameter (index scans), whatever the planner would
# make of a join against the grouped views; their ROWS estimates keep the outer plans nested
# loops. noetl.unprojected_executions plans its scan with the actual position (EXECUTE), so the
# planner sees how few rows lie above it (a txid index scan).
FAST = f"""
CREATE FUNCTION noetl.step_status_of_execution(p_execution_id text)
RETURNS SETOF noetl.step_status_log
LANGUAGE sql STABLE ROWS 10
SET search_path = noetl, pg_catalog AS $fn$
SELECT * FROM noetl.step_status_log WHERE execution_id = p_execution_id
$fn$;

-- The whole log's folds as function scans that return nothing while there is a position: an
-- inlined fold would weigh on every plan by its cost and planning time.
--
-- The shape of the views is what lets `ORDER BY started_at DESC LIMIT 50` stop after 50 rows
-- of an index scan (a Merge Append): each state table is a part of the UNION ALL on its own,
-- without a filter, and the filter that drops the state rows of unprojected executions is
-- applied above the union, so the planner copies it into each part as a plain filter. A
-- sub-select or a one-time filter inside the part would make it a subquery planned on its own,
-- and every state row would be sorted. The state is switched off (no checkpoint, or too far
-- behind) by the same filter: noetl.unprojected_executions then returns one null, and NOT IN
-- a list holding null is never true.
CREATE FUNCTION noetl.step_status_log_rows() RETURNS SETOF noetl.step_status_log
LANGUAGE plpgsql STABLE ROWS 1000 AS $fn$
BEGIN
    IF noetl.projection_position() IS NULL THEN
        RETURN QUERY SELECT * FROM noetl.step_status_log;
    END IF;
END
$fn$;

CREATE FUNCTION noetl.execution_status_log_rows() RETURNS SETOF noetl.execution_status_log
LANGUAGE plpgsql STABLE ROWS 1000 AS $fn$
BEGIN
    IF noetl.projection_position() IS NULL THEN
        RETURN QUERY SELECT * FROM noetl.execution_status_log;
    END IF;
END
$fn$;

CREATE FUNCTION noetl.projection_position() RETURNS xid8
LANGUAGE plpgsql STABLE AS $fn$
DECLARE
    p xid8;
    n bigint;
BEGIN
    SELECT c.position INTO p FROM noetl.projector_checkpoint c ORDER BY c.position LIMIT 1;
    IF p IS NULL THEN
        RETURN NULL;
    END IF;
    EXECUTE 'SELECT count(*) FROM (SELECT 1 FROM noetl.event WHERE txid >= $1 LIMIT $2) t'
        INTO n USING p, {TAIL_LIMIT + 1};
    RETURN CASE WHEN n > {TAIL_LIMIT} THEN NULL ELSE p END;
END
$fn$;

CREATE FUNCTION noetl.unprojected_executions() RETURNS SETOF text
LANGUAGE plpgsql STABLE ROWS 100 AS $fn$
DECLARE
    p xid8 := noetl.projection_position();
BEGIN
    IF p IS NOT NULL THEN
        RETURN QUERY EXECUTE
            'SELECT DISTINCT execution_id FROM noetl.event WHERE txid >= $1' USING p;
    ELSE
        RETURN NEXT NULL;  -- NOT IN a list holding null is never true: no state row is used
    END IF;
END
$fn$;

CREATE VIEW noetl.step_status AS
SELECT {STEP_FIELDS}
FROM (
    SELECT {STEP_FIELDS.replace("execution_id, ", "s.execution_id, ", 1)}, false AS folded
    FROM noetl.step_state s
    UNION ALL
    SELECT k.u, {_but_key(STEP_FIELDS, "v")}, true
    FROM noetl.unprojected_executions() AS k(u)
    CROSS JOIN LATERAL noetl.step_status_of_execution(k.u) AS v
    UNION ALL
    SELECT {STEP_FIELDS}, true
    FROM noetl.step_status_log_rows()
) p
WHERE p.folded OR p.execution_id NOT IN (SELECT u.u FROM noetl.unprojected_executions() AS u(u));

CREATE VIEW noetl.execution_status AS
SELECT {EXECUTION_FIELDS}
FROM (
    SELECT {EXECUTION_FIELDS.replace("execution_id, ", "s.execution_id, ", 1)}, false AS folded
    FROM noetl.execution_state s
    UNION ALL
    SELECT k.u, {_but_key(EXECUTION_FIELDS, "v")}, true
    FROM noetl.unprojected_executions() AS k(u)
    CROSS JOIN LATERAL noetl.execution_status_of(k.u) AS v
    UNION ALL
    SELECT {EXECUTION_FIELDS}, true
    FROM noetl.execution_status_log_rows()
) p
WHERE p.folded OR p.execution_id NOT IN (SELECT u.u FROM noetl.unprojected_executions() AS u(u));
"""

DROP_FAST = r"""
DROP VIEW noetl.execution_status;
DROP VIEW noetl.step_status;
DROP FUNCTION noetl.unprojected_executions();
DROP FUNCTION noetl.projection_position();
DROP FUNCTION noetl.execution_status_log_rows();
DROP FUNCTION noetl.step_status_log_rows();
DROP FUNCTION noetl.step_status_of_execution(text);
DROP FUNCTION noetl.execution_status_of(text);
DROP VIEW noetl.execution_status_log;
DROP VIEW noetl.execution_steps;
DROP FUNCTION noetl.step_status_of(text, text);
DROP VIEW noetl.step_status_log;
"""

# Indexes of the history questions (docs/cookbook.md). BRIN: events arrive roughly in created_at
# order, a few pages of index for the whole table, next to nothing per insert.
INDEXES = {
    "ix_event_created_at": "noetl.event USING brin (created_at)",
    # Covering: durations per step over a window are an index-only scan.
    "ix_step_state_finished_at": "noetl.step_state (finished_at) "
    "INCLUDE (execution_id, step, status, started_at)",
    "ix_step_state_status_finished_at": "noetl.step_state (status, finished_at)",
    "ix_execution_state_playbook_started_at": "noetl.execution_state (playbook, started_at)",
}

VIEW_COMMENTS = {
    "step_status": "One row per step of every execution, exact at all times by the rules of "
    "projector.fold: noetl.step_state for the executions with nothing unprojected, a fold of "
    "the log for the others (noetl.unprojected_executions), the whole log's fold "
    "(noetl.step_status_log) before any projector ran.",
    "execution_status": "One row per execution, exact at all times by the rules of "
    "projector.fold: noetl.execution_state for the executions with nothing unprojected, a fold "
    "of the log for the others, the whole log's fold (noetl.execution_status_log) before any "
    "projector ran.",
    "step_status_log": "noetl.step_status computed from noetl.event alone (a fold of the whole "
    "log; filter by execution_id).",
    "execution_status_log": "noetl.execution_status computed from noetl.event alone (a fold of "
    "the whole log; filter by execution_id).",
    "execution_steps": "Per execution, its steps summed up from noetl.step_status_log: counts by "
    "status, open iterations and the error of the FAILED step that finished first.",
}
FUNCTION_COMMENTS = {
    "step_status_of(text, text)": "step_status_of(execution_id, step): the noetl.step_status row "
    "of one step, folded from its events by an index scan.",
    "execution_status_of(text)": "execution_status_of(execution_id): the noetl.execution_status "
    "row of one execution folded from its events (no row when it has no event).",
    "step_status_of_execution(text)": "step_status_of_execution(execution_id): the "
    "noetl.step_status rows of one execution, folded from its events.",
    "step_status_log_rows()": "Every row of noetl.step_status_log (the fold of the whole log) "
    "while noetl.projection_position() is null, else none: the part of noetl.step_status "
    "used before any projector ran.",
    "execution_status_log_rows()": "Every row of noetl.execution_status_log (the fold of the "
    "whole log) while noetl.projection_position() is null, else none: the part of "
    "noetl.execution_status used before any projector ran.",
    "projection_position()": "The lowest position of all projector checkpoints (every projector "
    "and shard writes the state tables): every event below it is in noetl.step_state and "
    "noetl.execution_state. Null before any projector ran, and while more than 100,000 events "
    "lie at or above it (then the views fold the whole log).",
    "unprojected_executions()": "The executions with an event at or above "
    "noetl.projection_position() (an in-flight or unread transaction's); one null when the "
    "position is null (so that NOT IN it is never true). The views fold these from the log.",
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments() -> str:
    old = _previous()
    out = [f"COMMENT ON VIEW noetl.{v} IS {_literal(c)};" for v, c in VIEW_COMMENTS.items()]
    columns = {
        "step_status": old.STEP_COLUMN_COMMENTS,
        "step_status_log": old.STEP_COLUMN_COMMENTS,
        "execution_status": old.EXECUTION_COLUMN_COMMENTS,
        "execution_status_log": old.EXECUTION_COLUMN_COMMENTS,
        "execution_steps": old.VIEW_EXTRA_COLUMN_COMMENTS["execution_steps"],
    }
    for view, by_column in columns.items():
        for column, comment in by_column.items():
            out.append(f"COMMENT ON COLUMN noetl.{view}.{column} IS {_literal(comment)};")
    for signature, comment in FUNCTION_COMMENTS.items():
        out.append(f"COMMENT ON FUNCTION noetl.{signature} IS {_literal(comment)};")
    return "\n".join(out)


def _restore_previous() -> str:
    """Revision 0005's step_status, execution_steps, execution_status and per-key functions,
    with their comments."""
    old = _previous()
    text = _log_views("step_status", "execution_status")
    text = text.replace("LANGUAGE sql STABLE ROWS 1\nSET", "LANGUAGE sql STABLE\nSET")
    text = text.replace("LANGUAGE sql STABLE ROWS 1 AS", "LANGUAGE sql STABLE AS")
    out = [text]
    for view in ("step_status", "execution_status", "execution_steps"):
        out.append(f"COMMENT ON VIEW noetl.{view} IS {_literal(old.VIEW_COMMENTS[view])};")
    columns = {
        "step_status": old.STEP_COLUMN_COMMENTS,
        "execution_status": old.EXECUTION_COLUMN_COMMENTS,
        "execution_steps": old.VIEW_EXTRA_COLUMN_COMMENTS["execution_steps"],
    }
    for view, by_column in columns.items():
        for column, comment in by_column.items():
            out.append(f"COMMENT ON COLUMN noetl.{view}.{column} IS {_literal(comment)};")
    for signature in ("step_status_of(text, text)", "execution_status_of(text)"):
        comment = old.FUNCTION_COMMENTS[signature]
        out.append(f"COMMENT ON FUNCTION noetl.{signature} IS {_literal(comment)};")
    return "\n".join(out)


def _run(statements: str) -> None:
    """Run SQL text as written, on the migration's connection and in its transaction."""
    with op.get_bind().connection.cursor() as cursor:
        cursor.execute(statements)


def upgrade() -> None:
    _run(DROP_OLD)
    _run(_log_views("step_status_log", "execution_status_log"))
    _run(FAST)
    for name, target in INDEXES.items():
        _run(f"CREATE INDEX {name} ON {target}")
    _run(_comments())


def downgrade() -> None:
    for name in INDEXES:
        _run(f"DROP INDEX noetl.{name}")
    _run(DROP_FAST)
    _run(_restore_previous())
