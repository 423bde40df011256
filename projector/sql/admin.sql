-- Statements of the `projector db` commands and of the partition upkeep (schema upkeep).

-- name: ensure_partitions
-- Create the monthly partitions of noetl.event from this month (UTC) on, for %s months in all;
-- returns how many were created (existing ones are left alone).
SELECT noetl.ensure_event_partitions(date_trunc('month', now() AT TIME ZONE 'UTC')::date, %s)

-- name: months_before
-- The range partitions of noetl.event that end at or before %(cut)s, oldest first: schema, table,
-- lower and upper bound (read from the catalog, whatever the partitions are called), and their
-- size on disk with indexes.
SELECT n.nspname, c.relname, p.bounds[1]::timestamptz, p.bounds[2]::timestamptz,
       pg_total_relation_size(c.oid)
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT regexp_match(pg_get_expr(c.relpartbound, c.oid),
                        $re$FROM \('([^']+)'\) TO \('([^']+)'\)$re$) AS bounds
) AS p
WHERE i.inhparent = 'noetl.event'::regclass
  AND p.bounds IS NOT NULL
  AND p.bounds[2]::timestamptz <= %(cut)s
ORDER BY 3

-- name: rows_before
-- Per partition, the events created before %(cut)s: schema, table, whether it is the default
-- partition, how many, how many the projection has not read yet (txid at or above its checkpoint
-- %(checkpoint)s; every one when there is no checkpoint), and how many executions they are of.
SELECT n.nspname, c.relname, pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT', count(*),
       count(*) FILTER (WHERE %(checkpoint)s::xid8 IS NULL OR e.txid >= %(checkpoint)s::xid8),
       count(DISTINCT e.execution_id)
FROM noetl.event e
JOIN pg_class c ON c.oid = e.tableoid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE e.created_at < %(cut)s
GROUP BY 1, 2, 3

-- name: lock_timeout
-- Give up waiting for a lock after %s (for this transaction only): a retention waiting behind a
-- long transaction would queue every reader and writer of noetl.event behind itself.
SELECT set_config('lock_timeout', %s, true)
