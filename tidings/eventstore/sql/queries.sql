-- Named queries of the event store. Each block starts with `-- name: NAME`
-- and runs to the next one; values are always bound parameters.

-- name: append_events
-- The batch travels as one JSON array of events (one encoding in Python, one
-- parse here, as jsonb: each payload is then a slice of it, not parsed again)
-- and is unpacked into the arrays tidings.append_events takes.
WITH batch AS MATERIALIZED (
    SELECT array_agg(u.instance_id ORDER BY u.ord) AS instance_ids,
           array_agg(u.aggregate_type ORDER BY u.ord) AS aggregate_types,
           array_agg(u.aggregate_id ORDER BY u.ord) AS aggregate_ids,
           array_agg(u.expected_sequence ORDER BY u.ord) AS expected,
           array_agg(u.event_type ORDER BY u.ord) AS event_types,
           array_agg(u.payload ORDER BY u.ord) AS payloads,
           array_agg(u.owner ORDER BY u.ord) AS owners,
           array_agg(u.creator ORDER BY u.ord) AS creators
    FROM ROWS FROM (
        jsonb_to_recordset(%(events)s::jsonb) AS (
            instance_id text, aggregate_type text, aggregate_id text, event_type text,
            payload jsonb, expected_sequence bigint, owner text, creator text)
    ) WITH ORDINALITY AS u(instance_id, aggregate_type, aggregate_id, event_type, payload,
                           expected_sequence, owner, creator, ord)
)
SELECT a.out_position, a.out_sequence, a.out_created_at
FROM batch b
CROSS JOIN LATERAL tidings.append_events(
    b.instance_ids, b.aggregate_types, b.aggregate_ids, b.expected, b.event_types,
    b.payloads, b.owners, b.creators, %(channel)s) a
ORDER BY a.out_position;

-- name: select_events
-- The filters are composed from fixed fragments (tidings.eventstore.filters).
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.payload, e.owner, e.creator, e.created_at, e.position
FROM tidings.events e
WHERE {filters}
ORDER BY e.position
{limit};

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

-- name: select_trail
-- Everything about one user or one notification, in position order
-- (`replay --user`, `replay --notification`): the trail's own events (the
-- user's aggregates, or the notification's), every event of the notifications
-- its requests fragment picks, and their source events on other aggregates (a
-- session's OTP challenge) with the source's sent event. The trail_* fragments
-- below, the filters and the limit are composed in as for select_events; the
-- block goes through psycopg's sql.format, hence the doubled braces of the JSON
-- paths (the fragments are inserted as they are, with single braces, and hold
-- no comments). A notification's own events are read directly, not through its
-- request, so one whose request is missing still shows them.
--
-- Each lookup has its index: own events and a notification's and a source's
-- events through the primary key (the aggregate's id first, migration 0013),
-- a user's requests through events_notification_user (migration 0006; same
-- expression, same predicate). Only positions
-- are collected, de-duplicated and sorted (bigints, not payloads; past
-- work_mem the server spills to disk), then each row is fetched by
-- events_position in that order and streams to the client through a cursor.
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
      AND {requests}
      AND (%(instance_ids)s::text[] IS NULL OR r.instance_id = ANY(%(instance_ids)s::text[]))
), trail AS (
    {own}
    UNION ALL
    SELECT n.position
    FROM requested r
    JOIN tidings.events n
      ON n.instance_id = r.instance_id
     AND n.aggregate_type = 'notification'
     AND n.aggregate_id = r.notification_id
    UNION ALL
    SELECT s.position
    FROM requested r
    JOIN tidings.events s
      ON s.instance_id = r.instance_id
     AND s.aggregate_type = r.source_type
     AND s.aggregate_id = r.source_id
     AND s.sequence >= r.source_sequence
    -- A user trail has every event of the user's aggregates already: looking
    -- for each request's source there again would be quadratic for a busy user.
    WHERE (%(user_id)s::text IS NULL OR r.source_id <> %(user_id)s)
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

-- name: trail_user_requests
(r.payload #>> '{request,user_id}') = %(user_id)s

-- name: trail_user_own
SELECT u.position FROM tidings.events u WHERE u.aggregate_id = %(user_id)s

-- name: trail_notification_requests
r.aggregate_id = %(notification_id)s AND r.aggregate_type = 'notification'

-- name: trail_notification_own
SELECT n.position
FROM tidings.events n
WHERE n.aggregate_id = %(notification_id)s AND n.aggregate_type = 'notification'
