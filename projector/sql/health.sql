-- Statements of the readiness probe and the lag figures of `projector project` (projector/health.py).

-- name: has_version_table
-- Whether alembic's version table exists (an unmigrated database has none).
SELECT to_regclass('alembic_version') IS NOT NULL

-- name: version
-- The revision the database is migrated to (alembic's version table).
SELECT version_num FROM alembic_version

-- name: projection_lag
-- How far projection %(name)s is behind: the checkpoint (null before its first run), the seconds
-- since the oldest unprojected transaction's first event was stored (0 when nothing waits), and
-- the number of events at or above the checkpoint, counted up to %(cap)s (index range scans on
-- txid: the cost grows with the lag, never with the table).
WITH cp AS (
    SELECT COALESCE((SELECT position FROM noetl.projector_checkpoint WHERE name = %(name)s),
                    '0'::xid8) AS position,
           (SELECT position::text FROM noetl.projector_checkpoint WHERE name = %(name)s) AS shown
)
SELECT cp.shown,
       COALESCE(EXTRACT(EPOCH FROM now() - (
           SELECT e.ingested_at FROM noetl.event e WHERE e.txid >= cp.position
           ORDER BY e.txid LIMIT 1)), 0)::float8,
       (SELECT count(*) FROM (SELECT 1 FROM noetl.event e WHERE e.txid >= cp.position
                              LIMIT %(cap)s) AS waiting)
FROM cp
