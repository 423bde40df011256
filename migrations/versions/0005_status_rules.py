"""Status rules for real noetl traffic (issue 14): the SQL twin of `projector.fold`, and comments.

Replaces the rules of revision 0002 with the ones `projector/fold.py` documents: six statuses by a
table, lifecycle events in both spellings, bookkeeping, `:task_sequence` steps, command units,
iterations and retries, explicit attempts (also the Rust worker's 0-based `meta.attempts`), errors
from every field real producers use, cancelled executions, progress and settledness. Views and
functions keep their names; `noetl.step_state` / `noetl.execution_state` gain the new columns and
are recomputed from the log (an upgrade takes about as long as `projector rebuild`). Every table,
view, function and column of the schema gets a COMMENT, the older ones too.

The SQL text lives in this file, not in the package, so that this revision stays what it was when
later code changes. Downgrade drops all of it and runs revision 0002's own SQL again.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Scalar rules. LANGUAGE sql, IMMUTABLE, one expression each: the planner inlines them, also
# nested. noetl.is_terminal, noetl.json_text and noetl.attempt_value stay as revision 0002 made
# them. Case mapping is ASCII-only (translate), so no result depends on the database locale.
FUNCTIONS = r"""
-- The status an event without one means, from its type (ASCII-lower-cased).
CREATE FUNCTION noetl.status_of_type(event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE
    WHEN strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'error') > 0
      OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'fail') > 0 THEN 'FAILED'
    WHEN strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'cancel') > 0 THEN 'CANCELLED'
    WHEN strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'skip') > 0 THEN 'SKIPPED'
    WHEN strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'done') > 0
      OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'exit') > 0
      OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'complete') > 0
      OR strpos(translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz'),
                'success') > 0 THEN 'COMPLETED'
    WHEN translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
             LIKE '%.issued'
      OR translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
             LIKE '%.queued'
      OR translate(event_type, 'ABCDEFGHIJKLMNOPQRSTUVWXYZ', 'abcdefghijklmnopqrstuvwxyz')
             LIKE '%.scheduled' THEN 'PENDING'
    ELSE 'RUNNING'
END
$fn$;

-- Raw status (already trimmed and ASCII-upper-cased) -> status, by the table of projector.fold.
CREATE FUNCTION noetl.status_of_text(status text, event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE status
    WHEN '' THEN noetl.status_of_type(event_type)
    WHEN 'PENDING' THEN 'PENDING' WHEN 'QUEUED' THEN 'PENDING' WHEN 'ISSUED' THEN 'PENDING'
    WHEN 'SCHEDULED' THEN 'PENDING' WHEN 'WAITING' THEN 'PENDING' WHEN 'CREATED' THEN 'PENDING'
    WHEN 'RUNNING' THEN 'RUNNING' WHEN 'STARTED' THEN 'RUNNING' WHEN 'ENTERED' THEN 'RUNNING'
    WHEN 'CLAIMED' THEN 'RUNNING' WHEN 'INITIALIZED' THEN 'RUNNING'
    WHEN 'REGISTERED' THEN 'RUNNING' WHEN 'ACTIVE' THEN 'RUNNING' WHEN 'RECEIVED' THEN 'RUNNING'
    WHEN 'PROCESSING' THEN 'RUNNING' WHEN 'IN_PROGRESS' THEN 'RUNNING'
    WHEN 'DRAINING' THEN 'RUNNING' WHEN 'RETRYING' THEN 'RUNNING'
    WHEN 'COMPLETED' THEN 'COMPLETED' WHEN 'COMPLETE' THEN 'COMPLETED' WHEN 'OK' THEN 'COMPLETED'
    WHEN 'SUCCESS' THEN 'COMPLETED' WHEN 'SUCCEEDED' THEN 'COMPLETED'
    WHEN 'SUCCESSFUL' THEN 'COMPLETED' WHEN 'DONE' THEN 'COMPLETED'
    WHEN 'FINISHED' THEN 'COMPLETED' WHEN 'DEACTIVATED' THEN 'COMPLETED'
    WHEN 'FAILED' THEN 'FAILED' WHEN 'FAIL' THEN 'FAILED' WHEN 'FAILURE' THEN 'FAILED'
    WHEN 'ERROR' THEN 'FAILED' WHEN 'ERRORED' THEN 'FAILED' WHEN 'TIMEOUT' THEN 'FAILED'
    WHEN 'TIMED_OUT' THEN 'FAILED'
    WHEN 'CANCELLED' THEN 'CANCELLED' WHEN 'CANCELED' THEN 'CANCELLED'
    WHEN 'ABORTED' THEN 'CANCELLED'
    WHEN 'SKIPPED' THEN 'SKIPPED'
    ELSE 'RUNNING'
END
$fn$;

-- Trim (space, tab, CR, LF), ASCII upper case, look up. Not inlined (PL/pgSQL): the statuses
-- that need it are few, and each query that names noetl.normalize_status stays small to plan.
CREATE FUNCTION noetl.status_of_raw(status text, event_type text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
BEGIN
    RETURN noetl.status_of_text(
        translate(btrim(coalesce(status, ''), E' \t\r\n'),
                  'abcdefghijklmnopqrstuvwxyz', 'ABCDEFGHIJKLMNOPQRSTUVWXYZ'),
        event_type);
END
$fn$;

-- The spellings producers send most often map here without a function call.
CREATE FUNCTION noetl.normalize_status(status text, event_type text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE status
    WHEN 'RUNNING' THEN 'RUNNING'
    WHEN 'COMPLETED' THEN 'COMPLETED'
    WHEN 'PENDING' THEN 'PENDING'
    WHEN 'STARTED' THEN 'RUNNING'
    WHEN 'FAILED' THEN 'FAILED'
    WHEN 'CANCELLED' THEN 'CANCELLED'
    WHEN 'SKIPPED' THEN 'SKIPPED'
    WHEN 'INITIALIZED' THEN 'RUNNING'
    WHEN 'initialized' THEN 'RUNNING'
    WHEN 'completed' THEN 'COMPLETED'
    WHEN 'failed' THEN 'FAILED'
    WHEN 'OK' THEN 'COMPLETED'
    ELSE noetl.status_of_raw(status, event_type)
END
$fn$;

-- The classification functions are wrapped in coalesce(): the planner then estimates each as one
-- boolean, instead of consulting the column statistics of every partition for every pattern and
-- IN (milliseconds of planning for a query on one execution). Prefixes are LIKE patterns (`\_` is
-- a literal underscore): cheaper per row than starts_with.
CREATE FUNCTION noetl.is_execution_event(event_type text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(event_type LIKE 'playbook.%' OR event_type LIKE 'playbook\_%'
                OR event_type LIKE 'workflow.%' OR event_type LIKE 'workflow\_%'
                OR event_type LIKE 'execution.%' OR event_type LIKE 'execution\_%'
                OR event_type = 'subscription.lifecycle', false)
$fn$;

-- `step` as stored: a bookkeeping node is one with or without the :task_sequence suffix.
CREATE FUNCTION noetl.is_bookkeeping(event_type text, step text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT NOT noetl.is_execution_event(event_type)
   AND coalesce(step IN ('events.batch', 'checkpointer', 'ingress', 'events.batch:task_sequence',
                         'checkpointer:task_sequence', 'ingress:task_sequence')
                OR event_type LIKE 'checkpoint.%' OR event_type LIKE 'subscription.%'
                OR event_type = 'heartbeat' OR event_type LIKE '%.heartbeat', false)
$fn$;

CREATE FUNCTION noetl.is_step_event(event_type text, step text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(step <> '' AND NOT noetl.is_execution_event(event_type)
                AND NOT noetl.is_bookkeeping(event_type, step), false)
$fn$;

CREATE FUNCTION noetl.event_class(event_type text, step text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN noetl.is_execution_event(event_type) THEN 'lifecycle'
            WHEN noetl.is_bookkeeping(event_type, step) THEN 'bookkeeping'
            WHEN step <> '' THEN 'step'
            ELSE 'execution' END
$fn$;

CREATE FUNCTION noetl.step_name(step text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN right(step, 14) = ':task_sequence' AND step <> ':task_sequence'
            THEN left(step, -14) ELSE step END
$fn$;

-- A JSON integer from 0 to 2147483646 (a 0-based attempt), else null.
CREATE FUNCTION noetl.attempt_index_value(value jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN jsonb_typeof(value) = 'number' AND value::text ~ '^(0|[1-9][0-9]{0,9})$'
            THEN CASE WHEN value::text::bigint <= 2147483646 THEN value::text::integer END
       END
$fn$;

CREATE FUNCTION noetl.event_attempt(context jsonb, meta jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(noetl.attempt_value(context -> 'attempt'), noetl.attempt_value(meta -> 'attempt'),
                noetl.attempt_index_value(meta -> 'attempts') + 1)
$fn$;

CREATE FUNCTION noetl.next_attempt(attempt integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN attempt < 2147483647 THEN attempt + 1 ELSE attempt END
$fn$;

-- (`->` on JSON that is not an object is null: no type checks needed.)
CREATE FUNCTION noetl.event_error(context jsonb, meta jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(noetl.json_text(context -> 'error'), noetl.json_text(meta -> 'error'),
                noetl.json_text(meta #> '{unknown_fields,error}'),
                noetl.json_text(meta #> '{unknown_fields,result,error}'),
                noetl.json_text(meta #> '{unknown_fields,result,context,error}'))
$fn$;

CREATE FUNCTION noetl.event_parent(context jsonb, meta jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(noetl.json_text(context -> 'parent_execution_id'),
                noetl.json_text(meta -> 'parent_execution_id'),
                noetl.json_text(meta #> '{unknown_fields,parent_execution_id}'))
$fn$;

CREATE FUNCTION noetl.event_playbook(event_type text, step text, context jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT CASE WHEN event_type LIKE 'playbook.%' OR event_type LIKE 'playbook\_%'
            THEN CASE WHEN jsonb_typeof(context -> 'playbook') = 'string'
                      THEN context ->> 'playbook'
                      WHEN step NOT IN ('', 'playbook', 'workflow', 'ingress') THEN step END
       END
$fn$;

CREATE FUNCTION noetl.event_command_id(meta jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT noetl.json_text(meta -> 'command_id')
$fn$;

CREATE FUNCTION noetl.event_iteration(meta jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
SELECT coalesce(noetl.json_text(meta -> 'loop_event_id'), '') || E'\x1f'
       || noetl.json_text(meta -> 'loop_iteration_index')
$fn$;
"""

# The walk over one step's events (projector.fold.StepWalk), fed in the fold order. One state
# carries both walks: the walk without commands in scalars, and from the step's first
# command.issued on (events before it attach to no unit) the walk with commands in arrays, one
# element per unit. The final function reads the one that applies. Unlabelled closers close
# units first in, first out: `fifo` lists those units and `fifo_head` is the next to close.
AGGREGATE = r"""
CREATE TYPE noetl.step_fold_state AS (
    all_pending boolean,
    last_event_type text,
    u_attempt integer,
    u_status text,
    u_error text,
    u_finished_at timestamptz,
    iterations integer,
    done_completed integer,
    done_attempt integer,
    done_cancelled boolean,
    commands boolean,
    unit_command_id text[],
    unit_iteration integer[],
    unit_attempt integer[],
    unit_status text[],
    unit_open boolean[],
    unit_error text[],
    unit_finished_at timestamptz[],
    iteration_unit integer[],
    key_name text[],
    key_iteration integer[],
    fifo integer[],
    fifo_head integer,
    latest integer
);

CREATE TYPE noetl.step_fold_result AS (
    status text,
    attempts integer,
    finished_at timestamptz,
    error text,
    last_event_type text,
    iterations integer,
    iterations_completed integer,
    iterations_failed integer,
    iterations_running integer
);

CREATE FUNCTION noetl.step_fold_step(
    s noetl.step_fold_state,
    p_status text,
    p_event_type text,
    p_attempt integer,
    p_created_at timestamptz,
    p_error text,
    p_command_id text,
    p_iteration text
) RETURNS noetl.step_fold_state
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    terminal boolean := p_status IN ('COMPLETED', 'FAILED', 'CANCELLED', 'SKIPPED');
    u integer;
    it integer;
    att integer;
    fresh boolean := false;
    queued boolean := false;
BEGIN
    s.last_event_type := p_event_type;
    IF s.all_pending AND p_status <> 'PENDING' THEN
        s.all_pending := false;
    END IF;
    -- The walk without commands: one unit at a time, open while its status is not terminal
    -- (u_finished_at is null exactly then).
    IF s.u_attempt = 0 THEN
        s.u_attempt := coalesce(p_attempt, 1);
        s.iterations := 1;
        s.u_status := p_status;
        s.u_error := CASE WHEN p_status = 'FAILED' THEN p_error END;
        s.u_finished_at := CASE WHEN terminal THEN p_created_at END;
    ELSIF p_attempt < s.u_attempt THEN
        NULL;  -- a straggler of an older attempt
    ELSIF p_attempt > s.u_attempt THEN
        -- the start of a higher attempt of the same iteration
        s.u_attempt := p_attempt;
        s.u_status := p_status;
        s.u_error := CASE WHEN p_status = 'FAILED' THEN p_error END;
        s.u_finished_at := CASE WHEN terminal THEN p_created_at END;
    ELSIF s.u_finished_at IS NULL THEN
        s.u_status := p_status;
        s.u_error := CASE WHEN p_status = 'FAILED' THEN p_error END;
        s.u_finished_at := CASE WHEN terminal THEN p_created_at END;
    ELSIF p_event_type LIKE '%.enter' OR p_event_type LIKE '%.issued'
          OR p_event_type LIKE '%.scheduled' OR p_event_type LIKE '%.retry'
          OR p_event_type LIKE '%.retrying' OR p_event_type LIKE '%.restarted' THEN
        IF s.u_status = 'FAILED' THEN
            s.u_attempt := noetl.next_attempt(s.u_attempt);  -- a retry
        ELSE
            -- the workflow entering the step again: a new iteration (the closed one is never
            -- FAILED here, a FAILED one is retried instead)
            s.done_completed := s.done_completed + (s.u_status = 'COMPLETED')::integer;
            s.done_cancelled := s.done_cancelled OR s.u_status = 'CANCELLED';
            s.done_attempt := greatest(s.done_attempt, s.u_attempt);
            s.iterations := s.iterations + 1;
            s.u_attempt := coalesce(p_attempt, 1);
        END IF;
        s.u_status := p_status;
        s.u_error := CASE WHEN p_status = 'FAILED' THEN p_error END;
        s.u_finished_at := CASE WHEN terminal THEN p_created_at END;
    ELSIF terminal THEN
        -- a later terminal status of the closed unit (a non-terminal one is ignored: sticky)
        s.u_error := CASE WHEN p_status = 'FAILED'
                          THEN CASE WHEN p_error IS NULL AND s.u_status = 'FAILED'
                                    THEN s.u_error ELSE p_error END END;
        s.u_status := p_status;
        s.u_finished_at := p_created_at;
    END IF;

    -- The walk with commands, from the step's first command.issued on.
    IF NOT s.commands THEN
        IF p_event_type <> 'command.issued' THEN
            RETURN s;
        END IF;
        s.commands := true;
    END IF;
    IF p_command_id IS NOT NULL THEN
        u := array_position(s.unit_command_id, p_command_id);
    END IF;
    IF u IS NULL AND p_event_type = 'command.issued' THEN
        -- a new unit: in the iteration its key names, else a retry of the latest work when that
        -- FAILED, else a new iteration
        IF p_iteration IS NOT NULL THEN
            it := s.key_iteration[array_position(s.key_name, p_iteration)];
        ELSIF s.unit_status[s.latest] = 'FAILED' THEN
            it := s.unit_iteration[s.latest];
        END IF;
        att := CASE WHEN it IS NULL THEN 1
                    ELSE noetl.next_attempt(s.unit_attempt[s.iteration_unit[it]]) END;
        IF p_attempt > att THEN
            att := p_attempt;
        END IF;
        u := coalesce(cardinality(s.unit_attempt), 0) + 1;
        IF it IS NULL THEN
            s.iteration_unit := s.iteration_unit || u;
            it := cardinality(s.iteration_unit);
            IF p_iteration IS NOT NULL THEN
                s.key_name := s.key_name || p_iteration;
                s.key_iteration := s.key_iteration || it;
            END IF;
        ELSE
            s.iteration_unit[it] := u;
        END IF;
        s.unit_command_id := s.unit_command_id || p_command_id;
        s.unit_iteration := s.unit_iteration || it;
        s.unit_attempt := s.unit_attempt || att;
        s.unit_status := s.unit_status || p_status;
        s.unit_open := s.unit_open || true;
        s.unit_error := s.unit_error || CASE WHEN p_status = 'FAILED' THEN p_error END;
        s.unit_finished_at := s.unit_finished_at || CASE WHEN terminal THEN p_created_at END;
        IF p_command_id IS NULL THEN
            s.fifo := s.fifo || u;
        END IF;
        s.latest := u;
        RETURN s;
    END IF;
    IF p_command_id IS NULL THEN
        IF s.fifo_head <= cardinality(s.fifo)
           AND p_event_type IN ('command.completed', 'command.failed', 'command.cancelled') THEN
            u := s.fifo[s.fifo_head];
            queued := true;
        ELSE
            u := s.latest;
        END IF;
    END IF;
    IF u IS NULL OR (p_command_id IS NULL AND p_attempt < s.unit_attempt[u]) THEN
        RETURN s;  -- a command this walk never saw issued, or a straggler of an older attempt
    END IF;
    IF p_attempt > s.unit_attempt[u] THEN
        s.unit_attempt[u] := p_attempt;
        fresh := s.unit_open[u];  -- the start of that attempt
    END IF;
    IF p_event_type IN ('command.completed', 'command.failed', 'command.cancelled') THEN
        p_status := CASE WHEN terminal THEN p_status
                         WHEN NOT fresh AND s.unit_finished_at[u] IS NOT NULL
                             THEN s.unit_status[u]
                         WHEN p_event_type = 'command.completed' THEN 'COMPLETED'
                         WHEN p_event_type = 'command.failed' THEN 'FAILED'
                         ELSE 'CANCELLED' END;
        s.unit_open[u] := false;
        terminal := true;
        IF queued THEN
            s.fifo_head := s.fifo_head + 1;
        END IF;
    ELSIF NOT (fresh OR terminal OR s.unit_finished_at[u] IS NULL) THEN
        s.latest := u;  -- a terminal status is sticky within its unit
        RETURN s;
    END IF;
    -- A FAILED event without an error keeps the error of the FAILED status it follows in the
    -- same attempt (step.exit FAILED after the call.error that says why).
    s.unit_error[u] := CASE WHEN p_status = 'FAILED'
                            THEN CASE WHEN p_error IS NULL AND NOT fresh
                                           AND s.unit_status[u] = 'FAILED'
                                      THEN s.unit_error[u] ELSE p_error END END;
    s.unit_status[u] := p_status;
    s.unit_finished_at[u] := CASE WHEN terminal THEN p_created_at END;
    s.latest := u;
    RETURN s;
END
$fn$;

CREATE FUNCTION noetl.step_fold_final(s noetl.step_fold_state) RETURNS noetl.step_fold_result
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $fn$
DECLARE
    r noetl.step_fold_result;
    u integer;
    failed_at timestamptz;
    cancelled boolean := false;
BEGIN
    r.last_event_type := s.last_event_type;
    IF NOT s.commands THEN
        r.iterations := s.iterations;
        r.attempts := greatest(s.done_attempt, s.u_attempt);
        r.iterations_running := (s.u_finished_at IS NULL)::integer;
        r.iterations_completed := s.done_completed + (s.u_status = 'COMPLETED')::integer;
        r.iterations_failed := (s.u_status = 'FAILED')::integer;
        IF s.u_finished_at IS NULL THEN
            r.status := CASE WHEN s.all_pending THEN 'PENDING' ELSE 'RUNNING' END;
        ELSE
            r.finished_at := s.u_finished_at;
            r.status := CASE WHEN s.u_status = 'FAILED' THEN 'FAILED'
                             WHEN s.done_cancelled OR s.u_status = 'CANCELLED' THEN 'CANCELLED'
                             WHEN s.done_completed > 0 OR s.u_status = 'COMPLETED'
                                 THEN 'COMPLETED'
                             ELSE 'SKIPPED' END;
            r.error := CASE WHEN s.u_status = 'FAILED' THEN s.u_error END;
        END IF;
        RETURN r;
    END IF;
    r.iterations := cardinality(s.iteration_unit);
    r.attempts := 0;
    r.iterations_running := 0;
    r.iterations_completed := 0;
    r.iterations_failed := 0;
    FOREACH u IN ARRAY s.iteration_unit LOOP
        r.attempts := greatest(r.attempts, s.unit_attempt[u]);
        IF s.unit_open[u] THEN
            r.iterations_running := r.iterations_running + 1;
        ELSE
            r.finished_at := greatest(r.finished_at, s.unit_finished_at[u]);
            IF s.unit_status[u] = 'COMPLETED' THEN
                r.iterations_completed := r.iterations_completed + 1;
            ELSIF s.unit_status[u] = 'FAILED' THEN
                r.iterations_failed := r.iterations_failed + 1;
                -- the failed iteration that finished first (ties: the lower iteration)
                IF failed_at IS NULL OR s.unit_finished_at[u] < failed_at THEN
                    failed_at := s.unit_finished_at[u];
                    r.error := s.unit_error[u];
                END IF;
            ELSIF s.unit_status[u] = 'CANCELLED' THEN
                cancelled := true;
            END IF;
        END IF;
    END LOOP;
    IF r.iterations_running > 0 THEN
        r.status := CASE WHEN s.all_pending THEN 'PENDING' ELSE 'RUNNING' END;
        r.finished_at := NULL;
        r.error := NULL;
    ELSIF r.iterations_failed > 0 THEN
        r.status := 'FAILED';
    ELSE
        r.status := CASE WHEN cancelled THEN 'CANCELLED'
                         WHEN r.iterations_completed > 0 THEN 'COMPLETED'
                         ELSE 'SKIPPED' END;
    END IF;
    RETURN r;
END
$fn$;

CREATE AGGREGATE noetl.step_fold(text, text, integer, timestamptz, text, text, text) (
    SFUNC = noetl.step_fold_step,
    STYPE = noetl.step_fold_state,
    FINALFUNC = noetl.step_fold_final,
    INITCOND = '(t,,0,,,,0,0,0,f,f,,,,,,,,,,,,1,)'
);
"""

# One step's fold, shared by the grouped view and the per-step function. The error is only
# read for events that can make a unit FAILED.
STEP_AGGREGATES = r"""
           noetl.step_fold(
               noetl.normalize_status(e.status, e.event_type),
               e.event_type,
               noetl.event_attempt(e.context, e.meta),
               e.created_at,
               CASE WHEN noetl.normalize_status(e.status, e.event_type) = 'FAILED'
                         OR e.event_type = 'command.failed'
                    THEN noetl.event_error(e.context, e.meta) END,
               noetl.event_command_id(e.meta),
               noetl.event_iteration(e.meta)
               ORDER BY e.created_at,
                        noetl.is_terminal(noetl.normalize_status(e.status, e.event_type)) DESC,
                        e.event_id COLLATE "C") AS f,
           min(e.created_at) AS started_at,
           max(e.created_at) AS last_event_at,
           count(*) AS event_count
"""
# `x`: the execution's deciding lifecycle event when it is CANCELLED (then a step that is not
# terminal is CANCELLED, finished when the execution was, no iteration running).
STEP_COLUMNS = r"""
       g.execution_id,
       g.step,
       CASE WHEN x.execution_id IS NOT NULL AND NOT noetl.is_terminal((g.f).status)
            THEN 'CANCELLED' ELSE (g.f).status END AS status,
       (g.f).attempts AS attempts,
       g.started_at,
       CASE WHEN x.execution_id IS NOT NULL AND NOT noetl.is_terminal((g.f).status)
            THEN x.finished_at ELSE (g.f).finished_at END AS finished_at,
       g.last_event_at,
       (g.f).last_event_type AS last_event_type,
       g.event_count,
       (g.f).error AS error,
       (g.f).iterations AS iterations,
       (g.f).iterations_completed AS iterations_completed,
       (g.f).iterations_failed AS iterations_failed,
       CASE WHEN x.execution_id IS NOT NULL THEN 0
            ELSE (g.f).iterations_running END AS iterations_running
"""

# The views read noetl.event directly, so they are exact at all times. A qual on execution_id (and
# step) is pushed into the grouped subqueries: one execution's status is a few index scans.
VIEWS = f"""
CREATE INDEX ix_event_execution_end ON noetl.event (execution_id, created_at)
WHERE noetl.is_execution_event(event_type)
  AND noetl.is_terminal(noetl.normalize_status(status, event_type));

CREATE VIEW noetl.execution_end AS
SELECT DISTINCT ON (e.execution_id)
       e.execution_id,
       noetl.normalize_status(e.status, e.event_type) AS status,
       e.created_at AS finished_at,
       e.event_id,
       e.event_type,
       noetl.event_error(e.context, e.meta) AS error
FROM noetl.event e
WHERE noetl.is_execution_event(e.event_type)
  AND noetl.is_terminal(noetl.normalize_status(e.status, e.event_type))
ORDER BY e.execution_id, e.created_at DESC, e.event_id COLLATE "C" DESC;

CREATE VIEW noetl.step_status AS
SELECT {STEP_COLUMNS}
FROM (
    SELECT e.execution_id,
           noetl.step_name(e.step) AS step,
           {STEP_AGGREGATES}
    FROM noetl.event e
    WHERE noetl.is_step_event(e.event_type, e.step)
    GROUP BY e.execution_id, noetl.step_name(e.step)
) g
LEFT JOIN noetl.execution_end x ON x.execution_id = g.execution_id AND x.status = 'CANCELLED';

-- The same for one step, for the projector: an explicit parameterised index scan of the step's
-- events (both spellings of its name), whatever the planner would make of the grouped view.
CREATE FUNCTION noetl.step_status_of(p_execution_id text, p_step text)
RETURNS SETOF noetl.step_status
LANGUAGE sql STABLE AS $fn$
SELECT {STEP_COLUMNS}
FROM (
    SELECT p_execution_id AS execution_id,
           p_step AS step,
           {STEP_AGGREGATES}
    FROM noetl.event e
    WHERE e.execution_id = p_execution_id
      AND e.step IN (p_step, p_step || ':task_sequence')
      AND noetl.step_name(e.step) = p_step
      AND noetl.is_step_event(e.event_type, e.step)
) g
LEFT JOIN noetl.execution_end x ON x.execution_id = p_execution_id AND x.status = 'CANCELLED'
WHERE g.event_count > 0
$fn$;

CREATE VIEW noetl.execution_activity AS
SELECT e.execution_id,
       min(e.created_at) AS started_at,
       max(e.created_at) AS last_event_at,
       count(*) AS event_count,
       max(e.created_at) FILTER (WHERE NOT noetl.is_bookkeeping(e.event_type, e.step))
           AS last_progress_at,
       coalesce(bool_and(noetl.normalize_status(e.status, e.event_type) = 'PENDING')
                    FILTER (WHERE NOT noetl.is_bookkeeping(e.event_type, e.step)), true)
           AS nothing_started,
       min(noetl.event_parent(e.context, e.meta) COLLATE "C") AS parent_execution_id,
       min(noetl.event_playbook(e.event_type, e.step, e.context) COLLATE "C") AS playbook
FROM noetl.event e
GROUP BY e.execution_id;

CREATE VIEW noetl.execution_steps AS
SELECT execution_id,
       count(*) AS step_count,
       count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
       count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
       count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running,
       sum(iterations_running) AS open_units,
       (array_agg(error ORDER BY finished_at, step COLLATE "C")
            FILTER (WHERE status = 'FAILED'))[1] AS first_error
FROM noetl.step_status
GROUP BY execution_id;

CREATE VIEW noetl.execution_status AS
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

-- The view for one execution. The SET clause keeps the function from being inlined, so the key
-- stays a parameter pushed into every grouped subquery (index scans) instead of a join the
-- planner may flatten.
CREATE FUNCTION noetl.execution_status_of(p_execution_id text)
RETURNS SETOF noetl.execution_status
LANGUAGE sql STABLE
SET search_path = noetl, pg_catalog AS $fn$
SELECT * FROM noetl.execution_status WHERE execution_id = p_execution_id
$fn$;
"""

DROP_OLD = r"""
DROP FUNCTION noetl.execution_status_of(text);
DROP VIEW noetl.execution_status;
DROP FUNCTION noetl.step_status_of(text, text);
DROP VIEW noetl.step_status;
DROP AGGREGATE noetl.step_fold(text, text, integer, timestamptz, text);
DROP FUNCTION noetl.step_fold_step(noetl.step_fold_state, text, text, integer, timestamptz, text);
DROP TYPE noetl.step_fold_state;
DROP FUNCTION noetl.event_error(jsonb, jsonb);
DROP FUNCTION noetl.event_attempt(jsonb, jsonb);
DROP FUNCTION noetl.is_execution_event(text);
DROP FUNCTION noetl.normalize_status(text, text);
"""

DROP_NEW = r"""
DROP FUNCTION noetl.execution_status_of(text);
DROP VIEW noetl.execution_status;
DROP VIEW noetl.execution_steps;
DROP VIEW noetl.execution_activity;
DROP FUNCTION noetl.step_status_of(text, text);
DROP VIEW noetl.step_status;
DROP VIEW noetl.execution_end;
DROP INDEX noetl.ix_event_execution_end;
DROP AGGREGATE noetl.step_fold(text, text, integer, timestamptz, text, text, text);
DROP FUNCTION noetl.step_fold_final(noetl.step_fold_state);
DROP FUNCTION noetl.step_fold_step(
    noetl.step_fold_state, text, text, integer, timestamptz, text, text, text);
DROP TYPE noetl.step_fold_result;
DROP TYPE noetl.step_fold_state;
DROP FUNCTION noetl.event_iteration(jsonb);
DROP FUNCTION noetl.event_command_id(jsonb);
DROP FUNCTION noetl.event_playbook(text, text, jsonb);
DROP FUNCTION noetl.event_parent(jsonb, jsonb);
DROP FUNCTION noetl.event_error(jsonb, jsonb);
DROP FUNCTION noetl.json_text(jsonb);
DROP FUNCTION noetl.next_attempt(integer);
DROP FUNCTION noetl.event_attempt(jsonb, jsonb);
DROP FUNCTION noetl.attempt_index_value(jsonb);
DROP FUNCTION noetl.attempt_value(jsonb);
DROP FUNCTION noetl.step_name(text);
DROP FUNCTION noetl.event_class(text, text);
DROP FUNCTION noetl.is_step_event(text, text);
DROP FUNCTION noetl.is_bookkeeping(text, text);
DROP FUNCTION noetl.is_execution_event(text);
DROP FUNCTION noetl.is_terminal(text);
DROP FUNCTION noetl.normalize_status(text, text);
DROP FUNCTION noetl.status_of_raw(text, text);
DROP FUNCTION noetl.status_of_type(text);
DROP FUNCTION noetl.status_of_text(text, text);
"""

# The state tables' new columns (added to emptied tables: no defaults needed), and their
# recomputation from the views (the same statements as `projector rebuild`, frozen here).
NEW_STEP_COLUMNS = {
    "iterations": "integer",
    "iterations_completed": "integer",
    "iterations_failed": "integer",
    "iterations_running": "integer",
}
NEW_EXECUTION_COLUMNS = {
    "error": "text",
    "parent_execution_id": "text",
    "playbook": "text",
    "last_progress_at": "timestamptz",
    "open_units": "bigint",
    "settled": "boolean",
}
NULLABLE = {"error", "parent_execution_id", "playbook", "last_progress_at"}
STEP_FIELDS = (
    "execution_id, step, status, attempts, started_at, finished_at, last_event_at, "
    "last_event_type, event_count, error, iterations, iterations_completed, "
    "iterations_failed, iterations_running"
)
EXECUTION_FIELDS = (
    "execution_id, status, started_at, finished_at, last_event_at, event_count, step_count, "
    "steps_completed, steps_failed, steps_running, error, parent_execution_id, playbook, "
    "last_progress_at, open_units, settled"
)
OLD_STEP_FIELDS = (
    "execution_id, step, status, attempts, started_at, finished_at, last_event_at, "
    "last_event_type, event_count, error"
)
OLD_EXECUTION_FIELDS = (
    "execution_id, status, started_at, finished_at, last_event_at, event_count, step_count, "
    "steps_completed, steps_failed, steps_running"
)
# The tables are refilled from the views with the step counts of the new step_state, as
# `projector rebuild` does; the checkpoint stays (every event below it is in the new rows).
REFILL = f"""
INSERT INTO noetl.step_state ({STEP_FIELDS}) SELECT {STEP_FIELDS} FROM noetl.step_status;
INSERT INTO noetl.execution_state ({EXECUTION_FIELDS})
SELECT a.execution_id,
       coalesce(x.status, CASE WHEN a.nothing_started THEN 'PENDING' ELSE 'RUNNING' END),
       a.started_at, x.finished_at, a.last_event_at, a.event_count,
       coalesce(s.step_count, 0), coalesce(s.steps_completed, 0), coalesce(s.steps_failed, 0),
       coalesce(s.steps_running, 0),
       coalesce(x.error, CASE WHEN x.status IS DISTINCT FROM 'COMPLETED' THEN s.first_error END),
       a.parent_execution_id, a.playbook, a.last_progress_at, coalesce(s.open_units, 0),
       coalesce(s.steps_running, 0) = 0
FROM noetl.execution_activity a
LEFT JOIN noetl.execution_end x ON x.execution_id = a.execution_id
LEFT JOIN (
    SELECT execution_id, count(*) AS step_count,
           count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running,
           sum(iterations_running) AS open_units,
           (array_agg(error ORDER BY finished_at, step COLLATE "C")
                FILTER (WHERE status = 'FAILED'))[1] AS first_error
    FROM noetl.step_state GROUP BY execution_id
) s ON s.execution_id = a.execution_id;
"""
# Revision 0002's rules, for the downgrade.
REFILL_OLD = f"""
INSERT INTO noetl.step_state ({OLD_STEP_FIELDS})
SELECT {OLD_STEP_FIELDS} FROM noetl.step_status;
INSERT INTO noetl.execution_state ({OLD_EXECUTION_FIELDS})
SELECT {OLD_EXECUTION_FIELDS} FROM noetl.execution_status;
"""

# What every object holds, for the people who only use SQL (`\\d+ noetl.step_status`).
STEP_COLUMN_COMMENTS = {
    "execution_id": "The execution the step belongs to.",
    "step": "The step: noetl.event.step without a :task_sequence suffix (noetl.step_name); "
    "lifecycle and bookkeeping events belong to no step.",
    "status": "PENDING, RUNNING, COMPLETED, FAILED, CANCELLED or SKIPPED. While an iteration is "
    "open: PENDING when every event of the step is PENDING, else RUNNING. Then FAILED when an "
    "iteration's last try failed (even if others completed later), else CANCELLED, COMPLETED, "
    "SKIPPED in that order; CANCELLED too when the execution was cancelled first.",
    "attempts": "Tries of the iteration that needed the most: 1 without retries, however many "
    "iterations; explicit attempts (context.attempt, meta.attempt, 0-based meta.attempts) "
    "only ever raise it.",
    "started_at": "created_at of the step's first event.",
    "finished_at": "When the step became terminal (the latest close of an iteration's last "
    "try); null while it is not.",
    "last_event_at": "created_at of the step's last event.",
    "last_event_type": "event_type of the step's last event in the fold order (created_at, "
    "terminal first, event_id by code point).",
    "event_count": "Number of the step's events.",
    "error": "While FAILED: the error of the failed iteration that finished first (context.error, "
    "meta.error, the envelope's error or result.error; noetl.event_error).",
    "iterations": "Iterations of the step: loop items, parallel commands and each time the "
    "workflow entered the step; a retry is another try of the same iteration.",
    "iterations_completed": "Iterations whose last try closed COMPLETED.",
    "iterations_failed": "Iterations whose last try closed FAILED.",
    "iterations_running": "Iterations whose last try is still open (a command issued and not "
    "yet completed, failed or cancelled).",
}
EXECUTION_COLUMN_COMMENTS = {
    "execution_id": "The execution (noetl.event.execution_id; integers as decimal text).",
    "status": "The status of the last terminal lifecycle event (playbook.*, workflow.*, "
    "execution.*, playbook_* ..., subscription.lifecycle); without one PENDING while nothing "
    "but PENDING events exist, else RUNNING. Never guessed from the steps.",
    "started_at": "created_at of the execution's first event.",
    "finished_at": "created_at of the terminal lifecycle event that set the status; null "
    "without one.",
    "last_event_at": "created_at of the execution's last event, bookkeeping included.",
    "event_count": "Number of the execution's events, lifecycle and bookkeeping included.",
    "step_count": "Number of its steps.",
    "steps_completed": "Steps that are COMPLETED.",
    "steps_failed": "Steps that are FAILED.",
    "steps_running": "Steps that are not terminal (PENDING or RUNNING).",
    "error": "The error of the lifecycle event that set the status; else, unless COMPLETED, the "
    "error of the FAILED step that finished first (ties: step name by code point).",
    "parent_execution_id": "The execution that started this one (context.parent_execution_id, "
    "meta.parent_execution_id or the envelope's parent_execution_id), as text.",
    "playbook": "The playbook its playbook.* / playbook_* events name: context.playbook, else "
    "their step unless that is playbook, workflow or ingress.",
    "last_progress_at": "created_at of its last event that is not bookkeeping (batch, checkpoint, "
    "subscription machinery, heartbeats); null without one. Minutes behind last_event_at while "
    "not terminal: stalled.",
    "open_units": "Iterations still open across its steps.",
    "settled": "True when no step is running: nothing more happens unless the engine starts new "
    "work (a settled execution without an end event is stuck or lost its end).",
}
EVENT_COLUMN_COMMENTS = {
    "execution_id": "The execution the event belongs to (integers as decimal text).",
    "event_id": "The producer's event id, or one the sink derived from the content; unique per "
    "execution.",
    "event_type": "What happened, as the producer named it (command.issued, step.exit, "
    "playbook_completed, ...); noetl.event_class says what it is to the status rules.",
    "step": "The step (node) as sent, '' for none; noetl.step_name maps it to its step.",
    "status": "The status exactly as sent (null when none); noetl.normalize_status maps it.",
    "created_at": "When the producer says the event happened (UTC, microseconds); the fold "
    "order's first key.",
    "context": "The event's free-form JSON payload (context / payload on the wire).",
    "worker_id": "The worker that sent the event, when it said.",
    "meta": "Envelope metadata (command_id, attempt, loop fields, ...); top-level fields the "
    "envelope does not know are kept in meta.unknown_fields.",
    "ingested_at": "When the row was stored.",
    "txid": "The inserting transaction's id: the projector reads rows by this fence.",
}
REJECTED_COLUMN_COMMENTS = {
    "id": "Sequence number of the rejection.",
    "raw": "The input as text (bytes that are not UTF-8, or NUL, escaped).",
    "raw_bytes": "The input's exact bytes when raw could not hold them.",
    "source": "Where the input came from (file, NATS subject, API).",
    "position": "Its position in the source (line, sequence), when known.",
    "reason": "Why it was rejected.",
    "rejected_at": "When it was rejected.",
    "raw_length": "The whole input's length in bytes (raw keeps at most a prefix of it).",
    "raw_sha256": "SHA-256 of the whole input: with source and position, it keeps an input once.",
}
CHECKPOINT_COLUMN_COMMENTS = {
    "name": "The projection's name (default: default).",
    "position": "Every event with txid below this position is projected.",
    "updated_at": "When the position last moved.",
}
TABLE_COMMENTS = {
    "event": "Every stored event envelope, one row per (execution_id, event_id); range-"
    "partitioned by month on created_at. The history the status views read.",
    "event_rejected": "Input that could not be read or stored as an event, kept with the reason.",
    "step_state": "One row per step, kept by `projector project`: noetl.step_status as of the "
    "projector's checkpoint (equal to it once caught up).",
    "execution_state": "One row per execution, kept by `projector project`: "
    "noetl.execution_status as of the projector's checkpoint.",
    "projector_checkpoint": "How far each projector has read noetl.event (by txid).",
}
VIEW_COMMENTS = {
    "step_status": "One row per step of every execution, computed from noetl.event (exact the "
    "moment an event is committed), by the rules of projector.fold. Filter by execution_id.",
    "execution_status": "One row per execution, computed from noetl.event (exact at all times) "
    "by the rules of projector.fold. Filter by execution_id.",
    "execution_end": "Per execution, its last terminal lifecycle event in the fold order: the "
    "event that sets its status.",
    "execution_activity": "Per execution, what its events say outside the steps: first and last "
    "event, event count, last progress, parent execution, playbook, and whether nothing has "
    "started.",
    "execution_steps": "Per execution, its steps summed up from noetl.step_status: counts by "
    "status, open iterations and the error of the FAILED step that finished first.",
}
VIEW_EXTRA_COLUMN_COMMENTS = {
    "execution_end": {
        "execution_id": "The execution.",
        "status": "Its status: the event's normalised status.",
        "finished_at": "The event's created_at.",
        "event_id": "The event's id.",
        "event_type": "The event's type.",
        "error": "The event's error (noetl.event_error).",
    },
    "execution_activity": {
        "execution_id": "The execution.",
        "started_at": EXECUTION_COLUMN_COMMENTS["started_at"],
        "last_event_at": EXECUTION_COLUMN_COMMENTS["last_event_at"],
        "event_count": EXECUTION_COLUMN_COMMENTS["event_count"],
        "last_progress_at": EXECUTION_COLUMN_COMMENTS["last_progress_at"],
        "nothing_started": "True when every event that is not bookkeeping is PENDING.",
        "parent_execution_id": EXECUTION_COLUMN_COMMENTS["parent_execution_id"],
        "playbook": EXECUTION_COLUMN_COMMENTS["playbook"],
    },
    "execution_steps": {
        "execution_id": "The execution.",
        "step_count": EXECUTION_COLUMN_COMMENTS["step_count"],
        "steps_completed": EXECUTION_COLUMN_COMMENTS["steps_completed"],
        "steps_failed": EXECUTION_COLUMN_COMMENTS["steps_failed"],
        "steps_running": EXECUTION_COLUMN_COMMENTS["steps_running"],
        "open_units": EXECUTION_COLUMN_COMMENTS["open_units"],
        "first_error": "The error of the FAILED step that finished first (ties: step name).",
    },
}
FUNCTION_COMMENTS = {
    "status_of_text(text, text)": "The status of a raw status already trimmed and ASCII-upper-"
    "cased, by the table of projector.fold.STATUS_TABLE (unknown: RUNNING; empty: "
    "noetl.status_of_type).",
    "status_of_type(text)": "The status an event without one means, from its type: error/fail "
    "FAILED, cancel CANCELLED, skip SKIPPED, done/exit/complete/success COMPLETED, "
    "*.issued/*.queued/*.scheduled PENDING, else RUNNING.",
    "status_of_raw(text, text)": "status_of_raw(status, event_type): noetl.status_of_text of the "
    "status trimmed (space, tab, CR, LF) and ASCII-upper-cased.",
    "normalize_status(text, text)": "normalize_status(status, event_type): one of PENDING, "
    "RUNNING, COMPLETED, FAILED, CANCELLED, SKIPPED. The raw status is trimmed (space, tab, CR, "
    "LF), ASCII-upper-cased and looked up (noetl.status_of_text); empty or null comes from the "
    "event type (noetl.status_of_type). The most common spellings are mapped inline.",
    "is_terminal(text)": "True for COMPLETED, FAILED, CANCELLED and SKIPPED.",
    "is_execution_event(text)": "True for an execution's lifecycle events: playbook., workflow., "
    "execution. and the Rust server's playbook_, workflow_, execution_ types, and "
    "subscription.lifecycle. They set the execution's status and create no step.",
    "is_bookkeeping(text, text)": "is_bookkeeping(event_type, step): the engine's machinery, "
    "never a step and never progress: nodes events.batch, checkpointer, ingress (also with "
    ":task_sequence), types checkpoint.* and subscription.* (but subscription.lifecycle), "
    "heartbeat and *.heartbeat.",
    "is_step_event(text, text)": "is_step_event(event_type, step): the event belongs to the step "
    "noetl.step_name(step): not lifecycle, not bookkeeping, step not empty.",
    "event_class(text, text)": "event_class(event_type, step): lifecycle, bookkeeping, step or "
    "execution (an event with no step that is neither).",
    "step_name(text)": "The step a stored step name belongs to: x:task_sequence is the iteration "
    "machinery of step x.",
    "attempt_value(jsonb)": "A JSON integer from 1 to 2147483647 as integer, else null.",
    "attempt_index_value(jsonb)": "A JSON integer from 0 to 2147483646 (a 0-based attempt) as "
    "integer, else null.",
    "event_attempt(jsonb, jsonb)": "event_attempt(context, meta): the explicit attempt, "
    "context.attempt, else meta.attempt, else the Rust worker's 0-based meta.attempts plus "
    "one; null when none is valid.",
    "next_attempt(integer)": "The attempt after one (never past 2147483647).",
    "json_text(jsonb)": "A JSON string as its value, other JSON as its jsonb text, JSON null as "
    "null.",
    "event_error(jsonb, jsonb)": "event_error(context, meta): the error an event carries, the "
    "first of context.error, meta.error, the envelope's error, result.error and "
    "result.context.error (the last three kept in meta.unknown_fields), as text.",
    "event_parent(jsonb, jsonb)": "event_parent(context, meta): the parent execution an event "
    "names (context, meta or the envelope's parent_execution_id), as text.",
    "event_playbook(text, text, jsonb)": "event_playbook(event_type, step, context): the playbook "
    "a playbook.* / playbook_* event names (context.playbook, else its step unless that is "
    "empty, playbook, workflow or ingress); null for other events.",
    "event_command_id(jsonb)": "event_command_id(meta): meta.command_id as text.",
    "event_iteration(jsonb)": "event_iteration(meta): the iteration a command names "
    "(meta.loop_event_id, U+001F, meta.loop_iteration_index), null without an index.",
    "step_fold_step(noetl.step_fold_state, text, text, integer, timestamp with time zone, text, "
    "text, text)": "Transition function of noetl.step_fold: one event of the step, in the fold "
    "order.",
    "step_fold_final(noetl.step_fold_state)": "Final function of noetl.step_fold: the step's "
    "status, attempts, iteration counts and error from the walk.",
    "step_status_of(text, text)": "step_status_of(execution_id, step): the noetl.step_status row "
    "of one step, by an index scan of its events.",
    "execution_status_of(text)": "execution_status_of(execution_id): the noetl.execution_status "
    "row of one execution (no row when it has no event).",
    "ensure_event_partitions(date, integer)": "ensure_event_partitions(first_month, months): "
    "creates the monthly partitions of noetl.event for that many months from first_month's "
    "month, leaves existing ones alone; returns how many it created.",
}
AGGREGATE_COMMENT = (
    "step_fold(status, event_type, attempt, created_at, error, command_id, iteration): the walk "
    "over one step's events in the fold order (ORDER BY created_at, terminal first, event_id "
    'COLLATE "C"): units, iterations, attempts, as projector.fold.StepWalk.'
)
TYPE_COMMENTS = {
    "step_fold_state": "State of noetl.step_fold: the walk without commands in scalars, the walk "
    "with commands in arrays (one element per unit).",
    "step_fold_result": "Result of noetl.step_fold: the step's columns that come from its walk.",
}


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _comments() -> str:
    out = []
    for table, comment in {**TABLE_COMMENTS, **VIEW_COMMENTS}.items():
        kind = "VIEW" if table in VIEW_COMMENTS else "TABLE"
        out.append(f"COMMENT ON {kind} noetl.{table} IS {_literal(comment)};")
    columns = {
        "event": EVENT_COLUMN_COMMENTS,
        "event_rejected": REJECTED_COLUMN_COMMENTS,
        "projector_checkpoint": CHECKPOINT_COLUMN_COMMENTS,
        "step_state": STEP_COLUMN_COMMENTS,
        "step_status": STEP_COLUMN_COMMENTS,
        "execution_state": EXECUTION_COLUMN_COMMENTS,
        "execution_status": EXECUTION_COLUMN_COMMENTS,
        **VIEW_EXTRA_COLUMN_COMMENTS,
    }
    for table, by_column in columns.items():
        for column, comment in by_column.items():
            out.append(f"COMMENT ON COLUMN noetl.{table}.{column} IS {_literal(comment)};")
    for signature, comment in FUNCTION_COMMENTS.items():
        out.append(f"COMMENT ON FUNCTION noetl.{signature} IS {_literal(comment)};")
    out.append(
        "COMMENT ON AGGREGATE noetl.step_fold(text, text, integer, timestamptz, text, text, text)"
        f" IS {_literal(AGGREGATE_COMMENT)};"
    )
    for name, comment in TYPE_COMMENTS.items():
        out.append(f"COMMENT ON TYPE noetl.{name} IS {_literal(comment)};")
    return "\n".join(out)


def _uncomment_kept() -> str:
    """Remove the comments this revision put on objects that stay after its downgrade."""
    out = [f"COMMENT ON TABLE noetl.{t} IS NULL;" for t in TABLE_COMMENTS]
    kept = {
        "event": (EVENT_COLUMN_COMMENTS, {}),
        "event_rejected": (REJECTED_COLUMN_COMMENTS, {}),
        "projector_checkpoint": (CHECKPOINT_COLUMN_COMMENTS, {}),
        "step_state": (STEP_COLUMN_COMMENTS, NEW_STEP_COLUMNS),
        "execution_state": (EXECUTION_COLUMN_COMMENTS, NEW_EXECUTION_COLUMNS),
    }
    for table, (by_column, dropped) in kept.items():
        for column in by_column:
            if column not in dropped:
                out.append(f"COMMENT ON COLUMN noetl.{table}.{column} IS NULL;")
    out.append("COMMENT ON FUNCTION noetl.ensure_event_partitions(date, integer) IS NULL;")
    return "\n".join(out)


def _add_columns(table: str, columns: dict[str, str]) -> str:
    adds = ", ".join(
        f"ADD COLUMN {name} {kind}{'' if name in NULLABLE else ' NOT NULL'}"
        for name, kind in columns.items()
    )
    return f"ALTER TABLE noetl.{table} {adds};"


def _drop_columns(table: str, columns: dict[str, str]) -> str:
    return f"ALTER TABLE noetl.{table} " + ", ".join(f"DROP COLUMN {c}" for c in columns) + ";"


def _run(statements: str) -> None:
    """Run SQL text as written, on the migration's connection and in its transaction (no bind
    parameter parsing: the text holds `:` and `%`)."""
    with op.get_bind().connection.cursor() as cursor:
        cursor.execute(statements)


def upgrade() -> None:
    _run("DELETE FROM noetl.step_state; DELETE FROM noetl.execution_state;")
    _run(DROP_OLD)
    _run(FUNCTIONS)
    _run(AGGREGATE)
    _run(VIEWS)
    _run(_add_columns("step_state", NEW_STEP_COLUMNS))
    _run(_add_columns("execution_state", NEW_EXECUTION_COLUMNS))
    _run(
        "CREATE INDEX ix_execution_state_parent_execution_id ON noetl.execution_state "
        "USING hash (parent_execution_id)"
    )
    _run(
        "CREATE INDEX ix_execution_state_last_progress_at ON noetl.execution_state "
        "(last_progress_at) WHERE status IN ('PENDING', 'RUNNING')"
    )
    _run(REFILL)
    _run(_comments())


def downgrade() -> None:
    old = importlib.import_module("projector.migrations.versions.0002_status")
    _run(_uncomment_kept())
    _run("DELETE FROM noetl.step_state; DELETE FROM noetl.execution_state;")
    _run("DROP INDEX noetl.ix_execution_state_last_progress_at")
    _run("DROP INDEX noetl.ix_execution_state_parent_execution_id")
    _run(_drop_columns("step_state", NEW_STEP_COLUMNS))
    _run(_drop_columns("execution_state", NEW_EXECUTION_COLUMNS))
    _run(DROP_NEW)
    _run(old.FUNCTIONS)
    _run(old.AGGREGATE)
    _run(old.VIEWS)
    _run(REFILL_OLD)
