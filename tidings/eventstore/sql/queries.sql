-- Named queries of the event store. Each block starts with `-- name: NAME`
-- and runs to the next one; values are always bound parameters.

-- name: append_events
-- The arrays go as binary parameters: payloads above all travel unquoted.
SELECT out_position, out_sequence, out_created_at
FROM tidings.append_events(
    %(instance_ids)b, %(aggregate_types)b, %(aggregate_ids)b, %(expected)b,
    %(event_types)b, %(payloads)b, %(owners)b, %(creators)b, %(channel)s);

-- name: select_events
-- The filters are composed from fixed fragments (tidings.eventstore.filters).
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.payload, e.owner, e.creator, e.created_at, e.position
FROM tidings.events e
WHERE {filters}
ORDER BY e.position
{limit}
{lock};

-- name: read_ordered
-- Only below the horizon: every event there was written by a finished
-- transaction, so no event can still appear before what this returns.
WITH horizon AS (
    SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) AS position
)
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.payload, e.owner, e.creator, e.created_at, e.position, h.position AS horizon
FROM horizon h
LEFT JOIN LATERAL (
    SELECT *
    FROM tidings.events x
    WHERE x.position > %(after)s
      AND x.position < h.position
      AND (%(event_types)s::text[] IS NULL OR x.event_type = ANY(%(event_types)s::text[]))
    ORDER BY x.position
    LIMIT %(limit)s
) e ON true
ORDER BY e.position;

-- name: last_position
SELECT coalesce(max(position), 0) FROM tidings.events;

-- name: aggregate_sequence
SELECT coalesce(max(sequence), 0)
FROM tidings.events
WHERE instance_id = %(instance_id)s
  AND aggregate_type = %(aggregate_type)s
  AND aggregate_id = %(aggregate_id)s;
