-- Statements of the read model (projector/readmodel.py): what `projector status`, `history`,
-- `executions` and `demo` show, read from the exact views (noetl.step_status,
-- noetl.execution_status and their per-key functions), so they are right whether or not the
-- projector has caught up. Column lists match the row types in readmodel.py by name.

-- name: execution_status
-- One execution's status (no row for an unknown execution), folded from its events: a few index
-- scans whether or not a projector ever ran (the view would fold the whole log then).
SELECT execution_id, status, started_at, finished_at, last_event_at, event_count, step_count,
       steps_completed, steps_failed, steps_running, error, parent_execution_id, playbook,
       last_progress_at, open_units, settled
FROM noetl.execution_status_of(%s)

-- name: step_statuses
-- The steps of one execution, in the order they started, folded from its events (as above).
SELECT execution_id, step, status, attempts, started_at, finished_at, last_event_at,
       last_event_type, event_count, error, iterations, iterations_completed, iterations_failed,
       iterations_running
FROM noetl.step_status_of_execution(%s) ORDER BY started_at, step COLLATE "C"

-- name: history
-- The events of one execution (of one step when `step` is not null) in the order the status
-- rules read them: created_at, terminal first, event_id.
SELECT created_at, step, event_type, status,
       noetl.normalize_status(status, event_type) AS normalized_status, event_id,
       noetl.event_attempt(context, meta) AS attempt, context, worker_id, meta
FROM noetl.event
WHERE execution_id = %(execution_id)s AND (%(step)s::text IS NULL OR step = %(step)s)
ORDER BY created_at, noetl.is_terminal(noetl.normalize_status(status, event_type)) DESC,
         event_id COLLATE "C"

-- name: execution_exists
-- Whether any event of the execution is stored.
SELECT EXISTS (SELECT 1 FROM noetl.event WHERE execution_id = %s)

-- name: executions
-- Executions newest first, of one status when `status` is not null, only the non-terminal ones
-- without progress for `stalled` (an interval) when that is not null. Exact and cheap: the view
-- reads the newest matching execution_state rows (an index scan in started_at order) for what is
-- projected and folds the executions with unprojected events (migration 0006).
SELECT execution_id, status, started_at, finished_at, last_event_at, event_count, step_count,
       steps_completed, steps_failed, steps_running, error, parent_execution_id, playbook,
       last_progress_at, open_units, settled
FROM noetl.execution_status
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(stalled)s::interval IS NULL
       OR (NOT noetl.is_terminal(status)
           AND last_progress_at < now() - %(stalled)s::interval))
ORDER BY started_at DESC, execution_id COLLATE "C" DESC
LIMIT %(limit)s

-- name: executions_between
-- `executions` of those that started at or after `since` and before `until` (either may be
-- null). A statement of its own, so that `executions` without bounds keeps its plan (an index
-- scan in started_at order that stops after `limit` rows).
SELECT execution_id, status, started_at, finished_at, last_event_at, event_count, step_count,
       steps_completed, steps_failed, steps_running, error, parent_execution_id, playbook,
       last_progress_at, open_units, settled
FROM noetl.execution_status
WHERE (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s::timestamptz)
  AND (%(stalled)s::interval IS NULL
       OR (NOT noetl.is_terminal(status)
           AND last_progress_at < now() - %(stalled)s::interval))
ORDER BY started_at DESC, execution_id COLLATE "C" DESC
LIMIT %(limit)s

-- name: children
-- The executions an execution started (their parent_execution_id names it), in the order they
-- started. Exact like `executions`: the projected children by the parent_execution_id index, and
-- the executions with unprojected events folded.
SELECT execution_id, status, started_at, finished_at, last_event_at, event_count, step_count,
       steps_completed, steps_failed, steps_running, error, parent_execution_id, playbook,
       last_progress_at, open_units, settled
FROM noetl.execution_status
WHERE parent_execution_id = %(execution_id)s
ORDER BY started_at, execution_id COLLATE "C"
