-- Statements of the web view (projector/web): what its pages show beyond projector/readmodel.py.

-- name: executions
-- Executions newest first like readmodel.executions (of one status when `status` is not null,
-- only the non-terminal ones without progress for `stalled` when that is not null), and only
-- those that started at or after `since` and before `until` when those are not null. Exact and
-- cheap like readmodel.executions: the view reads execution_state for what is projected and
-- folds only the executions with unprojected events (migration 0006).
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
