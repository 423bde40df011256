-- Statements of the incremental projector and the rebuild (projector/projection.py).
--
-- The execution status rule (the last terminal status of a playbook.*/workflow.*/execution.*
-- event, RUNNING without one; started/last at the first/last event; step counts by status) is
-- written four times in SQL: the noetl.execution_status view and noetl.execution_status_of() in
-- the frozen migration 0002_status, and upsert_executions and rebuild_executions below. They
-- cannot share one text until a new migration replaces the view; until then
-- tests/test_status_properties.py binds all four (and the step rule's view, step_status_of and
-- both state tables) to the Python fold in projector/fold.py on random traces. Change one, change
-- all four and run that test.

-- name: try_lock
-- The projection's advisory lock (PROJECTOR_LOCK_CLASS, hashtext(name)) for this transaction,
-- or false at once when another projector holds it.
SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))

-- name: lock
-- The same lock, waiting for it (the rebuild waits for a running projector's transaction).
SELECT pg_advisory_xact_lock(%s, hashtext(%s))

-- name: fence
-- The oldest transaction still in progress: every event with txid below it is committed (or
-- never will be). Taken before the transaction writes anything.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text

-- name: horizon
-- A position every transaction committed before this statement lies below.
SELECT pg_snapshot_xmax(pg_current_snapshot())::text

-- name: ensure_checkpoint
-- The checkpoint row of the named projection, at position 0 when it is new.
INSERT INTO noetl.projector_checkpoint (name, position) VALUES (%s, '0')
ON CONFLICT (name) DO NOTHING

-- name: read_checkpoint
-- The checkpoint of the named projection, locked until the transaction ends.
SELECT position::text FROM noetl.projector_checkpoint WHERE name = %s FOR UPDATE

-- name: checkpoint
-- The checkpoint of the named projection, without locking (no row before its first run).
SELECT position::text FROM noetl.projector_checkpoint WHERE name = %s

-- name: write_checkpoint
-- Move the named projection's checkpoint to the given position (position first, then name).
UPDATE noetl.projector_checkpoint SET position = %s::xid8, updated_at = now() WHERE name = %s

-- name: plan_by_index
-- For chunk_bounds: walk the txid indexes in order instead of sorting every unread row.
SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off

-- name: plan_freely
-- Undo plan_by_index for the rest of the transaction.
SET LOCAL enable_sort = on; SET LOCAL enable_bitmapscan = on

-- name: chunk_bounds
-- The first unread txid below the fence, and the txid at offset `n` of the unread rows (null
-- when there are fewer).
SELECT (SELECT min(txid) FROM noetl.event
        WHERE txid >= %(start)s::xid8 AND txid < %(fence)s::xid8)::text,
       (SELECT txid FROM noetl.event WHERE txid >= %(start)s::xid8 AND txid < %(fence)s::xid8
        ORDER BY txid OFFSET %(n)s LIMIT 1)::text

-- name: next_txid
-- The first txid after the given one and below the fence (the end of a transaction that wrote
-- more rows than a chunk holds).
SELECT min(txid)::text FROM noetl.event WHERE txid > %s::xid8 AND txid < %s::xid8

-- name: pending
-- Rows at or above the new checkpoint: committed ones wait for the fence to pass them.
SELECT EXISTS (SELECT 1 FROM noetl.event WHERE txid >= %s::xid8)

-- name: touched
-- The steps (null for events that belong to no step) and executions of the chunk
-- [start, upper), with their number of events.
SELECT execution_id,
       CASE WHEN step <> '' AND NOT noetl.is_execution_event(event_type) THEN step END AS step,
       count(*)
FROM noetl.event
WHERE txid >= %s::xid8 AND txid < %s::xid8
GROUP BY 1, 2

-- name: upsert_steps
-- The steps touched by a chunk, recomputed by noetl.step_status_of: the view's rules for one
-- step, as an index scan of that step's events. (A LATERAL join against the grouped view itself
-- let the planner aggregate the whole table once the statistics said so: seconds per chunk at
-- 600k rows.)
INSERT INTO noetl.step_state (execution_id, step, status, attempts, started_at, finished_at,
                              last_event_at, last_event_type, event_count, error)
SELECT v.execution_id, v.step, v.status, v.attempts, v.started_at, v.finished_at,
       v.last_event_at, v.last_event_type, v.event_count, v.error
FROM unnest(%(execution_ids)s::text[], %(steps)s::text[]) AS k(execution_id, step)
CROSS JOIN LATERAL noetl.step_status_of(k.execution_id, k.step) v
ON CONFLICT (execution_id, step) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, last_event_at = EXCLUDED.last_event_at,
    last_event_type = EXCLUDED.last_event_type, event_count = EXCLUDED.event_count,
    error = EXCLUDED.error

-- name: upsert_executions
-- The executions touched by a chunk: the execution status rule (third copy, see the top of this
-- file), with the step counts taken from step_state (already up to date in this transaction)
-- instead of recomputing every step.
INSERT INTO noetl.execution_state (execution_id, status, started_at, finished_at, last_event_at,
                                   event_count, step_count, steps_completed, steps_failed,
                                   steps_running)
SELECT k.execution_id, coalesce(x.status, 'RUNNING'), a.started_at, x.finished_at,
       a.last_event_at, a.event_count, s.step_count, s.steps_completed, s.steps_failed,
       s.steps_running
FROM unnest(%(execution_ids)s::text[]) AS k(execution_id)
CROSS JOIN LATERAL (
    SELECT min(e.created_at) AS started_at, max(e.created_at) AS last_event_at,
           count(*) AS event_count
    FROM noetl.event e WHERE e.execution_id = k.execution_id
) a
LEFT JOIN LATERAL (
    SELECT noetl.normalize_status(e.status, e.event_type) AS status, e.created_at AS finished_at
    FROM noetl.event e
    WHERE e.execution_id = k.execution_id
      AND noetl.is_execution_event(e.event_type)
      AND noetl.is_terminal(noetl.normalize_status(e.status, e.event_type))
    ORDER BY e.created_at DESC, e.event_id COLLATE "C" DESC
    LIMIT 1
) x ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS step_count,
           count(*) FILTER (WHERE ss.status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE ss.status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(ss.status)) AS steps_running
    FROM noetl.step_state ss WHERE ss.execution_id = k.execution_id
) s
ON CONFLICT (execution_id) DO UPDATE SET
    status = EXCLUDED.status, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, last_event_at = EXCLUDED.last_event_at,
    event_count = EXCLUDED.event_count, step_count = EXCLUDED.step_count,
    steps_completed = EXCLUDED.steps_completed, steps_failed = EXCLUDED.steps_failed,
    steps_running = EXCLUDED.steps_running

-- name: clear_steps
-- The rebuild's first step: no step_state rows (readers see the old ones until it commits).
DELETE FROM noetl.step_state

-- name: clear_executions
-- The rebuild's second step: no execution_state rows.
DELETE FROM noetl.execution_state

-- name: rebuild_steps
-- Every step's state from the whole log: the step_status view, set-based.
INSERT INTO noetl.step_state (execution_id, step, status, attempts, started_at, finished_at,
                              last_event_at, last_event_type, event_count, error)
SELECT execution_id, step, status, attempts, started_at, finished_at, last_event_at,
       last_event_type, event_count, error
FROM noetl.step_status

-- name: rebuild_executions
-- Set-based twin of upsert_executions over the whole log (fourth copy of the execution status
-- rule, see the top of this file): the execution_status view's query with the step counts from
-- the freshly rebuilt step_state.
INSERT INTO noetl.execution_state (execution_id, status, started_at, finished_at, last_event_at,
                                   event_count, step_count, steps_completed, steps_failed,
                                   steps_running)
SELECT a.execution_id, coalesce(x.status, 'RUNNING'), a.started_at, x.finished_at,
       a.last_event_at, a.event_count, coalesce(s.step_count, 0), coalesce(s.steps_completed, 0),
       coalesce(s.steps_failed, 0), coalesce(s.steps_running, 0)
FROM (
    SELECT execution_id, min(created_at) AS started_at, max(created_at) AS last_event_at,
           count(*) AS event_count
    FROM noetl.event GROUP BY execution_id
) a
LEFT JOIN (
    SELECT DISTINCT ON (execution_id) execution_id,
           noetl.normalize_status(status, event_type) AS status, created_at AS finished_at
    FROM noetl.event
    WHERE noetl.is_execution_event(event_type)
      AND noetl.is_terminal(noetl.normalize_status(status, event_type))
    ORDER BY execution_id, created_at DESC, event_id COLLATE "C" DESC
) x ON x.execution_id = a.execution_id
LEFT JOIN (
    SELECT execution_id, count(*) AS step_count,
           count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running
    FROM noetl.step_state GROUP BY execution_id
) s ON s.execution_id = a.execution_id
