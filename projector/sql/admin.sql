-- Statements of the `projector db` commands (schema upkeep).

-- name: ensure_partitions
-- Create the monthly partitions of noetl.event from this month (UTC) on, for %s months in all;
-- returns how many were created (existing ones are left alone).
SELECT noetl.ensure_event_partitions(date_trunc('month', now() AT TIME ZONE 'UTC')::date, %s)
