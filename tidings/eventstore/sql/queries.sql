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

-- name: horizon
-- Every position below this one was written by a finished transaction (the
-- same horizon as read_ordered): no event can appear below it any more.
SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16;

-- name: select_user_trail
-- Everything about one user, in position order (`replay --user`): the events of
-- aggregates with the user's id, every event of the notifications requested for
-- the user, and their source events on other aggregates (a session's OTP
-- challenge) with the source's sent event. {filters} and {limit} are composed
-- as for select_events; the block goes through psycopg's sql.format, hence the
-- doubled braces of the JSON paths.
--
-- Each lookup has its index (migration 0006): the user's own events through
-- events_aggregate_id, the requests through events_notification_user (same
-- expression, same predicate), a notification's and a source's events
-- through events_aggregate_id too. Only positions are collected, de-duplicated
-- and sorted (bigints, not payloads; past work_mem the server spills to disk),
-- then each row is fetched by events_position in that order and streams to the
-- client through a cursor.
WITH requested AS MATERIALIZED (
    SELECT r.instance_id, r.aggregate_id AS notification_id,
           r.payload #>> '{{request,source,aggregate_type}}' AS source_type,
           r.payload #>> '{{request,source,aggregate_id}}' AS source_id,
           -- A request appended by hand may be malformed: no error, no source then.
           CASE WHEN jsonb_typeof(r.payload #> '{{request,source,sequence}}') = 'number'
                THEN (r.payload #>> '{{request,source,sequence}}')::numeric::bigint
           END AS source_sequence
    FROM tidings.events r
    WHERE r.event_type = 'notification.requested'
      AND (r.payload #>> '{{request,user_id}}') = %(user_id)s
      AND (%(instance_ids)s::text[] IS NULL OR r.instance_id = ANY(%(instance_ids)s::text[]))
), trail AS (
    SELECT u.position
    FROM tidings.events u
    WHERE u.aggregate_id = %(user_id)s
    UNION ALL
    SELECT n.position
    FROM requested r
    JOIN tidings.events n
      ON n.instance_id = r.instance_id
     AND n.aggregate_type = 'notification'
     AND n.aggregate_id = r.notification_id
    UNION ALL
    -- A source on the user's own aggregate is in the first branch already.
    SELECT s.position
    FROM requested r
    JOIN tidings.events s
      ON s.instance_id = r.instance_id
     AND s.aggregate_type = r.source_type
     AND s.aggregate_id = r.source_id
     AND s.sequence >= r.source_sequence
    WHERE r.source_id <> %(user_id)s
      AND (s.sequence = r.source_sequence
           OR s.payload ->> 'notification_id' = r.notification_id)
)
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.payload, e.owner, e.creator, e.created_at, e.position
FROM (SELECT DISTINCT position FROM trail ORDER BY position) t
JOIN tidings.events e ON e.position = t.position
WHERE {filters}
ORDER BY t.position
{limit};

-- name: select_notification_trail
-- One notification's events (in whichever instance), its source event and the
-- source aggregate's sent event for it (`replay --notification`); composed and
-- indexed like select_user_trail.
WITH requested AS MATERIALIZED (
    SELECT r.instance_id, r.aggregate_id AS notification_id,
           r.payload #>> '{{request,source,aggregate_type}}' AS source_type,
           r.payload #>> '{{request,source,aggregate_id}}' AS source_id,
           -- A request appended by hand may be malformed: no error, no source then.
           CASE WHEN jsonb_typeof(r.payload #> '{{request,source,sequence}}') = 'number'
                THEN (r.payload #>> '{{request,source,sequence}}')::numeric::bigint
           END AS source_sequence
    FROM tidings.events r
    WHERE r.aggregate_id = %(notification_id)s
      AND r.aggregate_type = 'notification'
      AND r.event_type = 'notification.requested'
      AND (%(instance_ids)s::text[] IS NULL OR r.instance_id = ANY(%(instance_ids)s::text[]))
), trail AS (
    SELECT n.position
    FROM tidings.events n
    WHERE n.aggregate_id = %(notification_id)s
      AND n.aggregate_type = 'notification'
    UNION ALL
    SELECT s.position
    FROM requested r
    JOIN tidings.events s
      ON s.instance_id = r.instance_id
     AND s.aggregate_type = r.source_type
     AND s.aggregate_id = r.source_id
     AND s.sequence >= r.source_sequence
    WHERE s.sequence = r.source_sequence
       OR s.payload ->> 'notification_id' = r.notification_id
)
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.payload, e.owner, e.creator, e.created_at, e.position
FROM (SELECT DISTINCT position FROM trail ORDER BY position) t
JOIN tidings.events e ON e.position = t.position
WHERE {filters}
ORDER BY t.position
{limit};
