-- Statements of the incremental projector and the rebuild (projector/projection.py).
--
-- The status rules live in migration 0005_status_rules (the folds of the log, named
-- noetl.step_status_log / noetl.execution_status_log since migration 0006, whose
-- noetl.step_status / noetl.execution_status read the state tables this file writes), and the
-- per-key functions noetl.step_status_of and noetl.execution_status_of (one execution's fold).
-- The steps are written from step_status_of / step_status_log. The execution row is put together from the views
-- noetl.execution_activity (what its events say outside the steps) and noetl.execution_end (its
-- deciding lifecycle event) and from the steps just written to step_state; that last part,
-- the step summary and the combination of the three, is written twice here (upsert_executions,
-- part_executions) and once in the view noetl.execution_status_log (with noetl.execution_steps).
-- tests/test_status_properties.py binds all of them to the Python fold in projector/fold.py on
-- random traces. Change one, change all three and run that test.

-- name: try_lock
-- The projection's advisory lock (PROJECTOR_LOCK_CLASS, hashtext(name)) for this transaction,
-- or false at once when another projector holds it.
SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))

-- name: try_shard_lock
-- A shard's locks for this transaction, or false at once: the projection's lock shared (shards of
-- one projection run side by side, never beside an unsharded instance or a rebuild of it) and
-- the shard's own lock exclusive (class, projection name, class, shard's checkpoint name).
SELECT pg_try_advisory_xact_lock_shared(%s, hashtext(%s))
       AND pg_try_advisory_xact_lock(%s, hashtext(%s))

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
-- The checkpoint row of the named projection, made when it is missing. A new one starts where
-- the shards of that projection (rows `name/K-of-N`) all are (everything below their lowest
-- position is projected), else at 0; their rows are removed, so that no row nobody moves holds
-- the views' position (the lowest checkpoint) back. (While the row exists there are no shard
-- rows: making a shard set removes it.)
WITH shards AS (
    DELETE FROM noetl.projector_checkpoint
    WHERE starts_with(name, %(name)s || '/') AND name ~ '/[0-9]+-of-[0-9]+$'
    RETURNING position
)
INSERT INTO noetl.projector_checkpoint (name, position)
SELECT %(name)s, coalesce((SELECT min(position) FROM shards), '0')
ON CONFLICT (name) DO NOTHING

-- name: ensure_shard_checkpoints
-- The checkpoint rows of every shard of a set of `n` (names `base/K-of-n`), created together so
-- that the views' position (the lowest checkpoint) never passes a shard that has not run yet.
-- A new row starts where the unsharded projection `base` is (everything below it is projected),
-- else at 0; the row of `base` is removed (nobody moves it while shards run: left, it would hold
-- the views' position back).
WITH base AS (
    DELETE FROM noetl.projector_checkpoint WHERE name = %(base)s RETURNING position
)
INSERT INTO noetl.projector_checkpoint (name, position)
SELECT %(base)s || '/' || k || '-of-' || %(n)s, coalesce((SELECT position FROM base), '0')
FROM generate_series(0, %(n)s - 1) AS k
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

-- name: serial
-- No parallel plans and no JIT for the rest of the transaction: a chunk's statements read a few
-- thousand rows, where starting workers costs more than it saves (and takes every core from the
-- writers), and where compiling the plan cost more than running it (the fold is PL/pgSQL, which
-- JIT never compiles; on a caller's session with JIT on, one chunk spent 0.2-2 s per statement
-- compiling). The projector's own sessions have jit=off already (CONNECT_KWARGS).
SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off

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
-- The steps (by their mapped name; null for events that belong to no step) and executions of
-- the chunk [start, upper), with their number of events, whether the execution got a terminal
-- lifecycle event, and whether that was a cancel (a cancel, or a later end that undoes one,
-- changes steps no event of the chunk names). With `shards` not null, only the executions of
-- shard `shard`: hashtext(execution_id) (as 0 .. 2^32-1) modulo `shards`.
SELECT execution_id,
       CASE WHEN noetl.is_step_event(event_type, step) THEN noetl.step_name(step) END AS step,
       count(*),
       bool_or(noetl.is_execution_event(event_type)
               AND noetl.is_terminal(noetl.normalize_status(status, event_type))) AS ended,
       bool_or(noetl.is_execution_event(event_type)
               AND noetl.normalize_status(status, event_type) = 'CANCELLED') AS cancelled
FROM noetl.event
WHERE txid >= %(start)s::xid8 AND txid < %(upper)s::xid8
  AND (%(shards)s::integer IS NULL
       OR mod(hashtext(execution_id)::bigint + 2147483648, %(shards)s) = %(shard)s)
GROUP BY 1, 2

-- name: upsert_steps
-- The steps touched by a chunk, and the steps of the executions that ended in it whose status the
-- cancel rule may change (the CANCELLED ones, and with a cancel in the chunk those not terminal),
-- recomputed by noetl.step_status_of: the view's rules for one step, as an index scan of that
-- step's events. (A LATERAL join against the grouped view itself let the planner aggregate the
-- whole table once the statistics said so: seconds per chunk at 600k rows.)
INSERT INTO noetl.step_state (execution_id, step, status, attempts, started_at, finished_at,
                              last_event_at, last_event_type, event_count, error, iterations,
                              iterations_completed, iterations_failed, iterations_running)
SELECT v.execution_id, v.step, v.status, v.attempts, v.started_at, v.finished_at,
       v.last_event_at, v.last_event_type, v.event_count, v.error, v.iterations,
       v.iterations_completed, v.iterations_failed, v.iterations_running
FROM (
    SELECT execution_id, step FROM unnest(%(execution_ids)s::text[], %(steps)s::text[])
        AS t(execution_id, step)
    UNION
    SELECT s.execution_id, s.step
    FROM unnest(%(ended)s::text[]) AS d(execution_id)
    CROSS JOIN LATERAL (  -- per execution (an index scan), whatever the statistics say
        SELECT ss.execution_id, ss.step FROM noetl.step_state ss
        WHERE ss.execution_id = d.execution_id
          AND (ss.status = 'CANCELLED'
               OR (d.execution_id = ANY(%(cancelled)s::text[])
                   AND NOT noetl.is_terminal(ss.status)))
        OFFSET 0
    ) s
) k
CROSS JOIN LATERAL noetl.step_status_of(k.execution_id, k.step) v
ON CONFLICT (execution_id, step) DO UPDATE SET
    status = EXCLUDED.status, attempts = EXCLUDED.attempts, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, last_event_at = EXCLUDED.last_event_at,
    last_event_type = EXCLUDED.last_event_type, event_count = EXCLUDED.event_count,
    error = EXCLUDED.error, iterations = EXCLUDED.iterations,
    iterations_completed = EXCLUDED.iterations_completed,
    iterations_failed = EXCLUDED.iterations_failed,
    iterations_running = EXCLUDED.iterations_running

-- name: upsert_executions
-- The executions touched by a chunk: noetl.execution_activity and noetl.execution_end for each,
-- with the steps summed up from step_state (already up to date in this transaction) instead of
-- recomputing every step. The combination is noetl.execution_status_log's (see the top of this
-- file).
-- OFFSET 0 keeps each view a subquery evaluated per key (its execution_id qual pushed into the
-- grouping, an index scan) instead of a join the planner may flatten into aggregating the whole
-- table.
INSERT INTO noetl.execution_state (execution_id, status, started_at, finished_at, last_event_at,
                                   event_count, step_count, steps_completed, steps_failed,
                                   steps_running, error, parent_execution_id, playbook,
                                   last_progress_at, open_units, settled)
SELECT k.execution_id,
       coalesce(x.status, CASE WHEN a.nothing_started THEN 'PENDING' ELSE 'RUNNING' END),
       a.started_at, x.finished_at, a.last_event_at, a.event_count, s.step_count,
       s.steps_completed, s.steps_failed, s.steps_running,
       coalesce(x.error, CASE WHEN x.status IS DISTINCT FROM 'COMPLETED' THEN s.first_error END),
       a.parent_execution_id, a.playbook, a.last_progress_at, coalesce(s.open_units, 0),
       s.steps_running = 0
FROM unnest(%(execution_ids)s::text[]) AS k(execution_id)
CROSS JOIN LATERAL (
    SELECT * FROM noetl.execution_activity v WHERE v.execution_id = k.execution_id OFFSET 0
) a
LEFT JOIN LATERAL (
    SELECT * FROM noetl.execution_end v WHERE v.execution_id = k.execution_id OFFSET 0
) x ON true
CROSS JOIN LATERAL (
    SELECT count(*) AS step_count,
           count(*) FILTER (WHERE ss.status = 'COMPLETED') AS steps_completed,
           count(*) FILTER (WHERE ss.status = 'FAILED') AS steps_failed,
           count(*) FILTER (WHERE NOT noetl.is_terminal(ss.status)) AS steps_running,
           sum(ss.iterations_running) AS open_units,
           (array_agg(ss.error ORDER BY ss.finished_at, ss.step COLLATE "C")
                FILTER (WHERE ss.status = 'FAILED'))[1] AS first_error
    FROM noetl.step_state ss WHERE ss.execution_id = k.execution_id
) s
ON CONFLICT (execution_id) DO UPDATE SET
    status = EXCLUDED.status, started_at = EXCLUDED.started_at,
    finished_at = EXCLUDED.finished_at, last_event_at = EXCLUDED.last_event_at,
    event_count = EXCLUDED.event_count, step_count = EXCLUDED.step_count,
    steps_completed = EXCLUDED.steps_completed, steps_failed = EXCLUDED.steps_failed,
    steps_running = EXCLUDED.steps_running, error = EXCLUDED.error,
    parent_execution_id = EXCLUDED.parent_execution_id, playbook = EXCLUDED.playbook,
    last_progress_at = EXCLUDED.last_progress_at, open_units = EXCLUDED.open_units,
    settled = EXCLUDED.settled

-- name: clear_steps
-- The rebuild's first step: no step_state rows (readers see the old ones until it commits).
DELETE FROM noetl.step_state

-- name: clear_executions
-- The rebuild's second step: no execution_state rows.
DELETE FROM noetl.execution_state

-- name: export_snapshot
-- The rebuild's snapshot, for its workers to read the log exactly as its transaction does.
SELECT pg_export_snapshot()

-- name: import_snapshot
-- A rebuild worker's first statement (in a REPEATABLE READ transaction): the rebuild's snapshot.
SET TRANSACTION SNAPSHOT %s

-- name: copy_settings
-- The text form of the rows the rebuild's workers stream to it (COPY text), the same at both ends
-- for the rest of the transaction, whatever each session's own DateStyle, TimeZone or client
-- encoding: the workers are new sessions with the database's defaults, the rebuild may run on a
-- caller's session that changed them.
SET LOCAL client_encoding = 'UTF8'; SET LOCAL DateStyle = 'ISO, MDY';
SET LOCAL IntervalStyle = 'postgres'; SET LOCAL TimeZone = 'UTC'

-- name: part_table
-- A rebuild worker's steps, kept for its execution rows (a temporary table, dropped at commit).
CREATE TEMPORARY TABLE rebuild_steps (LIKE noetl.step_state) ON COMMIT DROP

-- name: part_bounds
-- Where the rebuild's parts meet: the execution ids at the given fractions of a sample of the log
-- (1 % of its pages, and its first 1,000 rows so that a small log has some). Any bounds give the
-- same rows; these give the workers about the same share of events.
SELECT percentile_disc(%s::float8[]) WITHIN GROUP (ORDER BY execution_id)
FROM (
    SELECT execution_id FROM noetl.event TABLESAMPLE SYSTEM (1)
    UNION ALL
    (SELECT execution_id FROM noetl.event LIMIT 1000)
) sample

-- name: part_steps
-- One part of the rebuild's steps, the executions from `low` (null: from the first) up to before
-- `high` (null: to the last): the step_status_log view (the fold of the log), kept in the worker's
-- table and streamed out as the rows are folded. (COPY binds the values client-side, so a null
-- bound folds away.) The range reaches the grouping as an index condition: each worker reads,
-- sorts and folds only its own executions' events.
COPY (
    INSERT INTO pg_temp.rebuild_steps (execution_id, step, status, attempts, started_at,
                                       finished_at, last_event_at, last_event_type, event_count,
                                       error, iterations, iterations_completed, iterations_failed,
                                       iterations_running)
    SELECT execution_id, step, status, attempts, started_at, finished_at, last_event_at,
           last_event_type, event_count, error, iterations, iterations_completed,
           iterations_failed, iterations_running
    FROM noetl.step_status_log
    WHERE (execution_id >= %(low)s OR %(low)s IS NULL)
      AND (execution_id < %(high)s OR %(high)s IS NULL)
    RETURNING execution_id, step, status, attempts, started_at, finished_at, last_event_at,
              last_event_type, event_count, error, iterations, iterations_completed,
              iterations_failed, iterations_running
) TO STDOUT

-- name: part_executions
-- The same part of the rebuild's executions: the set-based twin of upsert_executions
-- (see the top of this file), the execution_status_log view's combination, with the steps summed up
-- from the worker's freshly folded steps (part_steps).
COPY (
    SELECT a.execution_id,
           coalesce(x.status, CASE WHEN a.nothing_started THEN 'PENDING' ELSE 'RUNNING' END),
           a.started_at, x.finished_at, a.last_event_at, a.event_count, coalesce(s.step_count, 0),
           coalesce(s.steps_completed, 0), coalesce(s.steps_failed, 0),
           coalesce(s.steps_running, 0),
           coalesce(x.error,
                    CASE WHEN x.status IS DISTINCT FROM 'COMPLETED' THEN s.first_error END),
           a.parent_execution_id, a.playbook, a.last_progress_at, coalesce(s.open_units, 0),
           coalesce(s.steps_running, 0) = 0
    FROM noetl.execution_activity a
    LEFT JOIN (
        SELECT * FROM noetl.execution_end
        WHERE (execution_id >= %(low)s OR %(low)s IS NULL)
          AND (execution_id < %(high)s OR %(high)s IS NULL)
    ) x ON x.execution_id = a.execution_id
    LEFT JOIN (
        SELECT execution_id, count(*) AS step_count,
               count(*) FILTER (WHERE status = 'COMPLETED') AS steps_completed,
               count(*) FILTER (WHERE status = 'FAILED') AS steps_failed,
               count(*) FILTER (WHERE NOT noetl.is_terminal(status)) AS steps_running,
               sum(iterations_running) AS open_units,
               (array_agg(error ORDER BY finished_at, step COLLATE "C")
                    FILTER (WHERE status = 'FAILED'))[1] AS first_error
        FROM pg_temp.rebuild_steps GROUP BY execution_id
    ) s ON s.execution_id = a.execution_id
    WHERE (a.execution_id >= %(low)s OR %(low)s IS NULL)
      AND (a.execution_id < %(high)s OR %(high)s IS NULL)
) TO STDOUT

-- name: copy_steps
-- The rebuild's steps, as its workers stream them (COPY text rows of part_steps).
COPY noetl.step_state (execution_id, step, status, attempts, started_at, finished_at,
                       last_event_at, last_event_type, event_count, error, iterations,
                       iterations_completed, iterations_failed, iterations_running) FROM STDIN

-- name: copy_executions
-- The rebuild's executions, as its workers stream them (COPY text rows of part_executions).
COPY noetl.execution_state (execution_id, status, started_at, finished_at, last_event_at,
                            event_count, step_count, steps_completed, steps_failed,
                            steps_running, error, parent_execution_id, playbook,
                            last_progress_at, open_units, settled) FROM STDIN
