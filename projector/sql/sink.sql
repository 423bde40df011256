-- Statements of PostgresEventSink (projector/pgsink.py, projector/pglookup.py): the write
-- transaction of one batch, in the order it sends them, and the schema check of `open`.
--
-- Text columns travel in one of two forms, and each statement that takes them comes in both:
-- `_joined`, one string per column with the values joined by U+001F (U+001E marks NULL), split
-- by string_to_array in the server (about twice as fast as binding text[]); and `_array`, one
-- text[] parameter per column, for values that hold either character themselves.

-- name: schema_present
-- Whether noetl.event exists (checked once, when the sink opens).
SELECT to_regclass('noetl.event') IS NOT NULL

-- name: start
-- The write transaction's explicit BEGIN (the sink's sessions are in autocommit), pipelined with
-- `begin` or `begin_notify` and the range lookup: psycopg would sync after the BEGIN it sends
-- itself, a round trip of its own.
BEGIN

-- name: begin
-- The transaction id (to recognise our own rows after a lost COMMIT) and the advisory locks
-- (SINK_LOCK_CLASS, bucket) on the batch's lock buckets, taken in sorted order so that writers
-- never deadlock; one round trip, pipelined with the BEGIN. For a batch of rejections only.
SELECT pg_current_xact_id()::text,
 (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(%s, b)
  FROM (SELECT unnest(%s::int[]) AS b ORDER BY 1) o) l)

-- name: begin_notify
-- `begin`, plus the projectors' payload-free wake-up on channel %s: a NOTIFY is delivered at
-- commit wherever it stands in the transaction, and only then.
SELECT pg_current_xact_id()::text,
 (SELECT count(*) FROM (SELECT pg_advisory_xact_lock(%s, b)
  FROM (SELECT unnest(%s::int[]) AS b ORDER BY 1) o) l), pg_notify(%s, '')

-- name: ranges_joined
-- The stored rows of the batch's keys (execution ids, event ids; joined form): one range scan per
-- execution over the unique index, from its smallest to its largest event id in the batch (bounds
-- computed in the server, in the column's collation), at most 2n + 16 rows for its n keys.
-- Producers' ids grow, so the range of new events holds no stored row and costs one index descent
-- per partition instead of one per key; a redelivered batch finds exactly its own rows. An
-- execution whose range returns the limit is too dense to be read whole: its keys are probed.
SELECT r.execution_id, r.event_id, r.created_at, r.txid, r.content_hash, b.n
 FROM (SELECT k.execution_id, min(k.event_id) AS lo, max(k.event_id) AS hi, count(*) AS n
  FROM unnest(string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'))
  AS k(execution_id, event_id) GROUP BY 1) b
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
  x.content_hash FROM noetl.event x WHERE x.execution_id = b.execution_id
  AND x.event_id >= b.lo AND x.event_id <= b.hi LIMIT 2 * b.n + 16) r

-- name: ranges_array
-- `ranges_joined` with the keys as two text[] parameters.
SELECT r.execution_id, r.event_id, r.created_at, r.txid, r.content_hash, b.n
 FROM (SELECT k.execution_id, min(k.event_id) AS lo, max(k.event_id) AS hi, count(*) AS n
  FROM unnest(%s::text[], %s::text[]) AS k(execution_id, event_id) GROUP BY 1) b
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
  x.content_hash FROM noetl.event x WHERE x.execution_id = b.execution_id
  AND x.event_id >= b.lo AND x.event_id <= b.hi LIMIT 2 * b.n + 16) r

-- name: ranges_given_joined
-- `ranges_joined` with the bounds computed by the client (execution ids, lowest and highest event
-- ids joined, key counts as int[]), used when every id is a decimal number of one length per
-- execution (snowflakes, counters): such strings sort alike in every collation.
SELECT r.execution_id, r.event_id, r.created_at, r.txid, r.content_hash, b.n
 FROM unnest(string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'),
  string_to_array(%s, E'\x1f', E'\x1e'), %s::int[]) AS b(execution_id, lo, hi, n)
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
  x.content_hash FROM noetl.event x WHERE x.execution_id = b.execution_id
  AND x.event_id >= b.lo AND x.event_id <= b.hi LIMIT 2 * b.n + 16) r

-- name: ranges_given_array
-- `ranges_given_joined` with execution ids and bounds as text[] parameters.
SELECT r.execution_id, r.event_id, r.created_at, r.txid, r.content_hash, b.n
 FROM unnest(%s::text[], %s::text[], %s::text[], %s::int[]) AS b(execution_id, lo, hi, n)
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
  x.content_hash FROM noetl.event x WHERE x.execution_id = b.execution_id
  AND x.event_id >= b.lo AND x.event_id <= b.hi LIMIT 2 * b.n + 16) r

-- name: lookup_joined
-- The stored rows of the given keys (execution ids, event ids; joined form), probed one by one in
-- every partition. LATERAL ... OFFSET 0 keeps the plan a nested loop of index probes whatever the
-- estimates: a hash join would scan the whole table.
SELECT e.execution_id, e.event_id, e.created_at, e.txid, e.content_hash
 FROM unnest(string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'))
 AS k(execution_id, event_id)
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
 x.content_hash
 FROM noetl.event x WHERE x.execution_id = k.execution_id AND x.event_id = k.event_id
 OFFSET 0) e

-- name: lookup_array
-- `lookup_joined` with the keys as two text[] parameters.
SELECT e.execution_id, e.event_id, e.created_at, e.txid, e.content_hash
 FROM unnest(%s::text[], %s::text[]) AS k(execution_id, event_id)
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
 x.content_hash
 FROM noetl.event x WHERE x.execution_id = k.execution_id AND x.event_id = k.event_id
 OFFSET 0) e

-- name: lookup_window_joined
-- `lookup_joined` restricted to rows created from %s to before %s (the months the batch covers):
-- every other partition is pruned before execution.
SELECT e.execution_id, e.event_id, e.created_at, e.txid, e.content_hash
 FROM unnest(string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'))
 AS k(execution_id, event_id)
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
 x.content_hash
 FROM noetl.event x WHERE x.execution_id = k.execution_id AND x.event_id = k.event_id
 AND x.created_at >= %s AND x.created_at < %s OFFSET 0) e

-- name: lookup_window_array
-- `lookup_window_joined` with the keys as two text[] parameters.
SELECT e.execution_id, e.event_id, e.created_at, e.txid, e.content_hash
 FROM unnest(%s::text[], %s::text[]) AS k(execution_id, event_id)
 CROSS JOIN LATERAL (SELECT x.execution_id, x.event_id, x.created_at, x.txid::text,
 x.content_hash
 FROM noetl.event x WHERE x.execution_id = k.execution_id AND x.event_id = k.event_id
 AND x.created_at >= %s AND x.created_at < %s OFFSET 0) e

-- name: stored_executions_joined
-- Which of the given executions (joined form) have any stored row, and whether they have rows
-- outside the window from %s to before %s (given twice more): three index probes per execution,
-- not per key. The keys of a new execution need no probe; those of an execution with rows
-- outside the window are probed everywhere.
SELECT s.x, s.outside FROM (SELECT u.x,
 EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x
  AND e.created_at >= %s AND e.created_at < %s) AS inside,
 EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x AND e.created_at < %s)
 OR EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x AND e.created_at >= %s)
 AS outside FROM unnest(string_to_array(%s, E'\x1f', E'\x1e')) AS u(x)) s
 WHERE s.inside OR s.outside

-- name: stored_executions_array
-- `stored_executions_joined` with the executions as a text[] parameter.
SELECT s.x, s.outside FROM (SELECT u.x,
 EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x
  AND e.created_at >= %s AND e.created_at < %s) AS inside,
 EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x AND e.created_at < %s)
 OR EXISTS (SELECT 1 FROM noetl.event e WHERE e.execution_id = u.x AND e.created_at >= %s)
 AS outside FROM unnest(%s::text[]) AS u(x)) s WHERE s.inside OR s.outside

-- name: compare_joined
-- Of the given events (execution id, event id, created_at in RFC 3339, event_type, step, status,
-- context JSON, worker_id, meta JSON; joined form), the 1-based positions of those stored with the
-- same created_at but other content. jsonb equality ignores key order and number spelling, as
-- the client's content hash does not.
SELECT k.i FROM unnest(string_to_array(%s, E'\x1f', E'\x1e'),
 string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'),
 string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'),
 string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'),
 string_to_array(%s, E'\x1f', E'\x1e'), string_to_array(%s, E'\x1f', E'\x1e'))
 WITH ORDINALITY
 AS k(execution_id, event_id, created_at, event_type, step, status, context, worker_id, meta, i)
 CROSS JOIN LATERAL (SELECT * FROM noetl.event x WHERE x.execution_id = k.execution_id
 AND x.event_id = k.event_id AND x.created_at = k.created_at::timestamptz LIMIT 1) e
 WHERE e.event_type IS DISTINCT FROM k.event_type OR e.step IS DISTINCT FROM k.step
 OR e.status IS DISTINCT FROM k.status OR e.context IS DISTINCT FROM k.context::jsonb
 OR e.worker_id IS DISTINCT FROM k.worker_id OR e.meta IS DISTINCT FROM k.meta::jsonb

-- name: compare_array
-- `compare_joined` with the columns as nine text[] parameters.
SELECT k.i FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
 %s::text[], %s::text[], %s::text[], %s::text[]) WITH ORDINALITY
 AS k(execution_id, event_id, created_at, event_type, step, status, context, worker_id, meta, i)
 CROSS JOIN LATERAL (SELECT * FROM noetl.event x WHERE x.execution_id = k.execution_id
 AND x.event_id = k.event_id AND x.created_at = k.created_at::timestamptz LIMIT 1) e
 WHERE e.event_type IS DISTINCT FROM k.event_type OR e.step IS DISTINCT FROM k.step
 OR e.status IS DISTINCT FROM k.status OR e.context IS DISTINCT FROM k.context::jsonb
 OR e.worker_id IS DISTINCT FROM k.worker_id OR e.meta IS DISTINCT FROM k.meta::jsonb

-- name: copy
-- The new rows, in binary COPY format, columns in the order of projector.batch.COPY_COLUMNS (the
-- envelope's fields, then the content hash); the jsonb columns are sent as jsonb's binary wire
-- format (declared bytea to the client, see projector.batch.COPY_TYPES).
COPY noetl.event (execution_id, event_id, event_type, step, status, created_at, context,
 worker_id, meta, content_hash) FROM STDIN (FORMAT BINARY)

-- name: committed
-- Whether one of the given transaction ids (earlier attempts at this batch, as text) committed
-- after all: its COMMIT went through although the connection died. An id at or past the next one
-- to be assigned (after a crash, ids that never reached the WAL are handed out again) is not
-- asked about: pg_xact_status() raises for it.
SELECT coalesce(bool_or(x::xid8 < pg_snapshot_xmax(pg_current_snapshot())
                        AND pg_xact_status(x::xid8) = 'committed'), false)
 FROM unnest(%s::text[]) AS x

-- name: reject
-- Keep one item that is not stored: at most a prefix of its input as text, the same bytes
-- exactly when text cannot hold them, the input's full length and SHA-256, where it came from
-- (source, position) and why. Input kept already with the same SHA-256, position and source (the
-- same file ingested twice, a message redelivered) is not kept again.
INSERT INTO noetl.event_rejected (raw, raw_bytes, raw_length, raw_sha256, source, position, reason)
 VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING

-- name: blockers
-- Who holds what a sink transaction waits for, in this database: the advisory locks
-- (SINK_LOCK_CLASS, bucket) of the given buckets (int[]), and locks on noetl's tables that stop
-- writes (SHARE or stronger). One row per session and lock: pid, application_name, user, state,
-- seconds its transaction has been open (null when this role may not see it), the lock.
SELECT a.pid, a.application_name, a.usename::text, a.state,
 extract(epoch FROM now() - a.xact_start)::float8 AS open_for, l.what
 FROM (SELECT pid, format('the sink''s advisory lock on bucket %%s', objid) AS what
   FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 2
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND classid::bigint = %s AND objid::bigint = ANY(%s::int[])
  UNION ALL
  SELECT pid, format('%%s on %%s', mode, relation::regclass) FROM pg_locks
   WHERE locktype = 'relation' AND granted
   AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND mode IN ('ShareLock', 'ShareRowExclusiveLock', 'ExclusiveLock', 'AccessExclusiveLock')
   AND relation IN (SELECT oid FROM pg_class WHERE relnamespace = 'noetl'::regnamespace)) l
 JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.pid <> pg_backend_pid()
 ORDER BY open_for DESC NULLS LAST, a.pid
