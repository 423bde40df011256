"""Step and execution status: SQL status rules, the step_fold aggregate, exact views, state tables.

The SQL here implements the rules documented in `projector.fold` (the Python reference); the
property-based tests keep the two equal. The SQL text lives in this file, not in the package, so
that this revision stays what it was when later code changes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from projector.schema import XID8

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCHEMA = "noetl"

# Scalar rules. LANGUAGE sql, IMMUTABLE, a single expression each: the planner inlines them.
# Case mapping is ASCII-only (translate), so results never depend on the database locale.
FUNCTIONS = r"""
CREATE FUNCTION noetl.normalize_status(status text, event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE translate(btrim(coalesce(status, ''), E' \t\r\n'),
                      'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')
    WHEN '' THEN CASE
        WHEN strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                              'abcdefghijklmnopqrstuvwxyz'), 'error') > 0
          OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                              'abcdefghijklmnopqrstuvwxyz'), 'failed') > 0 THEN 'FAILED'
        WHEN strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                              'abcdefghijklmnopqrstuvwxyz'), 'done') > 0
          OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                              'abcdefghijklmnopqrstuvwxyz'), 'exit') > 0
          OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ',
                              'abcdefghijklmnopqrstuvwxyz'), 'completed') > 0 THEN 'COMPLETED'
        ELSE 'RUNNING' END
    WHEN 'OK' THEN 'COMPLETED'
    WHEN 'SUCCESS' THEN 'COMPLETED'
    WHEN 'SUCCEEDED' THEN 'COMPLETED'
    WHEN 'DONE' THEN 'COMPLETED'
    WHEN 'ERROR' THEN 'FAILED'
    WHEN 'FAILURE' THEN 'FAILED'
    WHEN 'CANCELED' THEN 'CANCELLED'
    WHEN 'STARTED' THEN 'RUNNING'
    ELSE translate(btrim(coalesce(status, ''), E' \t\r\n'),
                   'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ')
END
$fn$;

CREATE FUNCTION noetl.is_terminal(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'SKIPPED'), false)
$fn$;

CREATE FUNCTION noetl.is_execution_event(event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT starts_with(event_type, 'playbook.') OR starts_with(event_type, 'workflow.')
    OR starts_with(event_type, 'execution.')
$fn$;

-- A JSON integer from 1 to 2147483647, else null.
CREATE FUNCTION noetl.attempt_value(value jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN jsonb_typeof(value) = 'number' AND value::text ~ '^[1-9][0-9]{0,9}$'
            THEN CASE WHEN value::text::bigint <= 2147483647 THEN value::text::integer END
       END
$fn$;

CREATE FUNCTION noetl.event_attempt(context jsonb, meta jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(noetl.attempt_value(context -> 'attempt'), noetl.attempt_value(meta -> 'attempt'))
$fn$;

-- A JSON string as its value, any other JSON as its text; JSON null as SQL null.
CREATE FUNCTION noetl.json_text(value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE jsonb_typeof(value) WHEN 'null' THEN NULL WHEN 'string' THEN value #>> '{}'
            ELSE value::text END
$fn$;

CREATE FUNCTION noetl.event_error(context jsonb, meta jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(
    CASE WHEN jsonb_typeof(context) = 'object' THEN noetl.json_text(context -> 'error') END,
    CASE WHEN jsonb_typeof(meta) = 'object' THEN noetl.json_text(meta -> 'error') END)
$fn$;
"""

# The attempt-aware fold of one step's events, fed in the fold order.
AGGREGATE = r"""
CREATE TYPE noetl.step_fold_state AS (
    attempt integer,
    status text,
    finished_at timestamptz,
    error text,
    last_event_type text
);

CREATE FUNCTION noetl.step_fold_step(
    s noetl.step_fold_state,
    p_status text,
    p_event_type text,
    p_attempt integer,
    p_created_at timestamptz,
    p_error text
) RETURNS noetl.step_fold_state
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    opens boolean := false;
BEGIN
    s.last_event_type := p_event_type;
    IF p_attempt IS NOT NULL THEN
        IF p_attempt < s.attempt THEN
            RETURN s;  -- a straggler from an older attempt
        ELSIF p_attempt > s.attempt THEN
            s.attempt := p_attempt;
            opens := true;
        END IF;
    ELSIF s.attempt = 0 THEN
        s.attempt := 1;
        opens := true;
    ELSIF s.status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'SKIPPED')
          AND (p_event_type LIKE '%.enter' OR p_event_type LIKE '%.issued'
               OR p_event_type LIKE '%.scheduled' OR p_event_type LIKE '%.retry'
               OR p_event_type LIKE '%.retrying' OR p_event_type LIKE '%.restarted') THEN
        s.attempt := s.attempt + 1;
        opens := true;
    END IF;
    IF opens
       OR s.status NOT IN ('COMPLETED', 'FAILED', 'CANCELLED', 'SKIPPED')
       OR p_status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'SKIPPED') THEN
        -- A FAILED event without an error keeps the error of the FAILED one it follows in the
        -- same attempt (step.exit FAILED after call.error with the message).
        s.error := CASE WHEN p_status = 'FAILED'
                        THEN coalesce(p_error,
                                      CASE WHEN NOT opens AND s.status = 'FAILED' THEN s.error END)
                   END;
        s.status := p_status;
        s.finished_at := CASE WHEN p_status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'SKIPPED')
                              THEN p_created_at END;
    END IF;
    RETURN s;
END
$fn$;

CREATE AGGREGATE noetl.step_fold(text, text, integer, timestamptz, text) (
    SFUNC = noetl.step_fold_step,
    STYPE = noetl.step_fold_state,
    INITCOND = '(0,,,,)'
);
"""

# Both views are exact at all times: they read noetl.event directly. A qual on execution_id (and
# step) is pushed into the grouped subqueries, so one execution's status is an index scan.
# One step's status, shared by the grouped view and by the projector's per-step function.
STEP_AGGREGATES = r"""
           noetl.step_fold(
               noetl.normalize_status(e.status, e.event_type),
               e.event_type,
               noetl.event_attempt(e.context, e.meta),
               e.created_at,
               CASE WHEN noetl.normalize_status(e.status, e.event_type) = 'FAILED'
                    THEN noetl.event_error(e.context, e.meta) END
               ORDER BY e.created_at,
                        noetl.is_terminal(noetl.normalize_status(e.status, e.event_type)) DESC,
                        e.event_id COLLATE "C") AS f,
           min(e.created_at) AS started_at,
           max(e.created_at) AS last_event_at,
           count(*) AS event_count
"""
STEP_COLUMNS = r"""
       g.execution_id,
       g.step,
       (g.f).status AS status,
       (g.f).attempt AS attempts,
       g.started_at,
       (g.f).finished_at AS finished_at,
       g.last_event_at,
       (g.f).last_event_type AS last_event_type,
       g.event_count,
       (g.f).error AS error
"""
STEP_EVENTS = "e.step <> '' AND NOT noetl.is_execution_event(e.event_type)"

VIEWS = f"""
CREATE VIEW noetl.step_status AS
SELECT {STEP_COLUMNS}
FROM (
    SELECT e.execution_id,
           e.step,
           {STEP_AGGREGATES}
    FROM noetl.event e
    WHERE {STEP_EVENTS}
    GROUP BY e.execution_id, e.step
) g;

-- The same for one step, for the projector: an explicit parameterised index scan, whatever the
-- planner would make of a join against the grouped view.
CREATE FUNCTION noetl.step_status_of(p_execution_id text, p_step text)
RETURNS SETOF noetl.step_status
LANGUAGE sql STABLE AS $fn$
SELECT {STEP_COLUMNS}
FROM (
    SELECT p_execution_id AS execution_id,
           p_step AS step,
           {STEP_AGGREGATES}
    FROM noetl.event e
    WHERE e.execution_id = p_execution_id AND e.step = p_step AND {STEP_EVENTS}
) g
WHERE g.event_count > 0
$fn$;

CREATE VIEW noetl.execution_status AS
SELECT a.execution_id,
       coalesce(x.status, 'RUNNING') AS status,
       a.started_at,
       x.finished_at,
       a.last_event_at,
       a.event_count,
       coalesce(s.step_count, 0) AS step_count,
       coalesce(s.steps_completed, 0) AS steps_completed,
       coalesce(s.steps_failed, 0) AS steps_failed,
       coalesce(s.steps_running, 0) AS steps_running
FROM (
    SELECT execution_id,
           min(created_at) AS started_at,
           max(created_at) AS last_event_at,
           count(*) AS event_count
    FROM noetl.event
    GROUP BY execution_id
) a
LEFT JOIN (
    SELECT DISTINCT ON (execution_id)
           execution_id,
           noetl.normalize_status(status, event_type) AS status,
           created_at AS finished_at
    FROM noetl.event
    WHERE noetl.is_execution_event(event_type)
      AND noetl.is_terminal(noetl.normalize_status(status, event_type))
    ORDER BY execution_id, created_at DESC, event_id COLLATE "C" DESC
) x ON x.execution_id = a.execution_id
LEFT JOIN (
    SELECT execution_id,
           count(*) AS step_count,
           count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running
    FROM noetl.step_status
    GROUP BY execution_id
) s ON s.execution_id = a.execution_id;

-- The same for one execution, for `projector executions` and other per-key callers. The SET
-- clause keeps the function from being inlined, so the key stays a parameter pushed into the
-- grouped step_status view (an index scan) instead of a join the planner may flatten.
CREATE FUNCTION noetl.execution_status_of(p_execution_id text)
RETURNS SETOF noetl.execution_status
LANGUAGE sql STABLE
SET search_path = noetl, pg_catalog AS $fn$
SELECT a.execution_id,
       coalesce(x.status, 'RUNNING'),
       a.started_at,
       x.finished_at,
       a.last_event_at,
       a.event_count,
       s.step_count,
       s.steps_completed,
       s.steps_failed,
       s.steps_running
FROM (
    SELECT p_execution_id AS execution_id,
           min(created_at) AS started_at,
           max(created_at) AS last_event_at,
           count(*) AS event_count
    FROM noetl.event
    WHERE execution_id = p_execution_id
) a
LEFT JOIN LATERAL (
    SELECT noetl.normalize_status(status, event_type) AS status, created_at AS finished_at
    FROM noetl.event
    WHERE execution_id = p_execution_id
      AND noetl.is_execution_event(event_type)
      AND noetl.is_terminal(noetl.normalize_status(status, event_type))
    ORDER BY created_at DESC, event_id COLLATE "C" DESC
    LIMIT 1
) x ON true
CROSS JOIN (
    SELECT count(*) AS step_count,
           count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running
    FROM noetl.step_status
    WHERE execution_id = p_execution_id
) s
WHERE a.event_count > 0
$fn$;
"""

DROP = r"""
DROP FUNCTION IF EXISTS noetl.execution_status_of(text);
DROP VIEW IF EXISTS noetl.execution_status;
DROP FUNCTION IF EXISTS noetl.step_status_of(text, text);
DROP VIEW IF EXISTS noetl.step_status;
DROP AGGREGATE IF EXISTS noetl.step_fold(text, text, integer, timestamptz, text);
DROP FUNCTION IF EXISTS
    noetl.step_fold_step(noetl.step_fold_state, text, text, integer, timestamptz, text);
DROP TYPE IF EXISTS noetl.step_fold_state;
DROP FUNCTION IF EXISTS noetl.event_error(jsonb, jsonb);
DROP FUNCTION IF EXISTS noetl.json_text(jsonb);
DROP FUNCTION IF EXISTS noetl.event_attempt(jsonb, jsonb);
DROP FUNCTION IF EXISTS noetl.attempt_value(jsonb);
DROP FUNCTION IF EXISTS noetl.is_execution_event(text);
DROP FUNCTION IF EXISTS noetl.is_terminal(text);
DROP FUNCTION IF EXISTS noetl.normalize_status(text, text);
"""


def upgrade() -> None:
    op.execute(FUNCTIONS)
    op.execute(AGGREGATE)
    op.execute(VIEWS)
    op.create_table(
        "step_state",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("step", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_type", sa.Text(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("execution_id", "step", name="pk_step_state"),
        schema=SCHEMA,
    )
    op.create_table(
        "execution_state",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_event_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("step_count", sa.BigInteger(), nullable=False),
        sa.Column("steps_completed", sa.BigInteger(), nullable=False),
        sa.Column("steps_failed", sa.BigInteger(), nullable=False),
        sa.Column("steps_running", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("execution_id", name="pk_execution_state"),
        schema=SCHEMA,
    )
    op.create_index(
        "ix_execution_state_started_at", "execution_state", ["started_at"], schema=SCHEMA
    )
    op.create_index(
        "ix_execution_state_status_started_at",
        "execution_state",
        ["status", "started_at"],
        schema=SCHEMA,
    )
    op.create_table(
        "projector_checkpoint",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", XID8(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name="pk_projector_checkpoint"),
        schema=SCHEMA,
    )


def downgrade() -> None:
    op.drop_table("projector_checkpoint", schema=SCHEMA)
    op.drop_table("execution_state", schema=SCHEMA)  # drops its indexes
    op.drop_table("step_state", schema=SCHEMA)
    op.execute(DROP)
