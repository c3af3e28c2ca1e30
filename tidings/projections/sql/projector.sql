-- Checkpoints and failures of the projector.

-- name: checkpoint_ensure
INSERT INTO tidings.projection_checkpoints (name) VALUES (%(name)s)
ON CONFLICT (name) DO NOTHING;

-- name: checkpoint_get
SELECT position FROM tidings.projection_checkpoints WHERE name = %(name)s;

-- name: checkpoint_advance
-- Compare-and-set: if another projector advanced it meanwhile, nothing is
-- updated and the caller rolls its whole batch back.
UPDATE tidings.projection_checkpoints
SET position = %(position)s, updated_at = now()
WHERE name = %(name)s AND position = %(expected)s;

-- name: checkpoint_reset
UPDATE tidings.projection_checkpoints SET position = 0, updated_at = now()
WHERE name = %(name)s;

-- name: failure_record
INSERT INTO tidings.projection_failures (
    name, position, instance_id, aggregate_type, aggregate_id, sequence, event_type, error)
VALUES (%(name)s, %(position)s, %(instance_id)s, %(aggregate_type)s, %(aggregate_id)s,
        %(sequence)s, %(event_type)s, %(error)s)
ON CONFLICT (name, position) DO UPDATE SET error = excluded.error, failed_at = now();

-- name: failures_reset
DELETE FROM tidings.projection_failures WHERE name = %(name)s;

-- name: failures_of
SELECT position, instance_id, aggregate_type, aggregate_id, sequence, event_type, error, failed_at
FROM tidings.projection_failures
WHERE name = %(name)s
ORDER BY position DESC
LIMIT %(limit)s;

-- name: failures_count
SELECT count(*) FROM tidings.projection_failures WHERE name = %(name)s;

-- name: lag_of
-- Events of the projection's types that it has not handled yet; the last
-- column counts those at positions the store has not handed out (a
-- transaction id that has not started: written by hand), which the ordered
-- reader cannot reach, so the lag cannot clear.
SELECT count(*), min(created_at),
       count(*) FILTER (
           WHERE position >= (pg_snapshot_xmax(pg_current_snapshot())::text::bigint << 16))
FROM tidings.events
WHERE position > %(position)s AND event_type = ANY(%(event_types)s);

-- name: leader_try_lock
SELECT pg_try_advisory_lock(7102, 1);

-- name: leader_unlock
SELECT pg_advisory_unlock(7102, 1);
