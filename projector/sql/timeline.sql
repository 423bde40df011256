-- Statements of the timeline (projector/timeline.py): `projector timeline`, `watch` and the web
-- view. The rules come from the SQL functions of migration 0005 (noetl.event_class,
-- noetl.step_name, noetl.normalize_status, ...), never from this file.

-- name: events
-- The events of one execution that a timeline draws, in the fold order (created_at, terminal
-- first, event_id by code point): every step event with its step (noetl.step_name) and every
-- lifecycle event (step null); bookkeeping and step-less events are left out. Errors are read
-- only for events that can fail a unit, like the views do.
SELECT e.created_at, e.event_id, e.event_type, e.status,
       noetl.normalize_status(e.status, e.event_type) AS normalized_status,
       CASE WHEN noetl.event_class(e.event_type, e.step) = 'step'
            THEN noetl.step_name(e.step) END AS step,
       e.context, e.meta
FROM noetl.event e
WHERE e.execution_id = %s
  AND noetl.event_class(e.event_type, e.step) IN ('step', 'lifecycle')
ORDER BY e.created_at, noetl.is_terminal(noetl.normalize_status(e.status, e.event_type)) DESC,
         e.event_id COLLATE "C"

-- name: now
-- The database's clock: the end of a running execution's bars and of its stall.
SELECT now()
