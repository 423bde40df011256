-- Statements of the web view (projector/web): what its pages show beyond projector/readmodel.py.

-- name: executions
-- Executions newest first like readmodel.executions (of one status when `status` is not null,
-- only the non-terminal ones without progress for `stalled` when that is not null), and only
-- those that started at or after `since` and before `until` when those are not null. Exact: the
-- newest matching rows of execution_state plus every execution with unprojected events, all
-- recomputed by noetl.execution_status_of.
WITH candidates AS (
    (SELECT execution_id FROM noetl.execution_state
     WHERE (%(status)s::text IS NULL OR status = %(status)s)
       AND (%(since)s::timestamptz IS NULL OR started_at >= %(since)s::timestamptz)
       AND (%(until)s::timestamptz IS NULL OR started_at < %(until)s::timestamptz)
       AND (%(stalled)s::interval IS NULL
            OR (status IN ('PENDING', 'RUNNING')
                AND last_progress_at < now() - %(stalled)s::interval))
     ORDER BY started_at DESC LIMIT %(limit)s)
    UNION
    SELECT DISTINCT execution_id FROM noetl.event
    WHERE txid >= coalesce(
        (SELECT position FROM noetl.projector_checkpoint WHERE name = 'default'), '0'::xid8)
)
SELECT v.execution_id, v.status, v.started_at, v.finished_at, v.last_event_at, v.event_count,
       v.step_count, v.steps_completed, v.steps_failed, v.steps_running, v.error,
       v.parent_execution_id, v.playbook, v.last_progress_at, v.open_units, v.settled
FROM candidates c
CROSS JOIN LATERAL noetl.execution_status_of(c.execution_id) v
WHERE (%(status)s::text IS NULL OR v.status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR v.started_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR v.started_at < %(until)s::timestamptz)
  AND (%(stalled)s::interval IS NULL
       OR (NOT noetl.is_terminal(v.status)
           AND v.last_progress_at < now() - %(stalled)s::interval))
ORDER BY v.started_at DESC, v.execution_id COLLATE "C" DESC
LIMIT %(limit)s
