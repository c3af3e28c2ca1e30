-- Named queries of `tidings audit verify`. All but the users copy run inside
-- one REPEATABLE READ, READ ONLY transaction: they see the log, the pending
-- queue and the users read model at one moment, write nothing, and take no
-- lock stronger than ACCESS SHARE, so workers and the projector go on.

-- name: audit_session
-- The audit never queues for a lock behind a migration (which would make the
-- workers queue behind both); it fails instead. Its name shows in
-- pg_stat_activity.
SELECT set_config('lock_timeout', '10s', false),
       set_config('application_name', 'tidings audit', false);

-- name: events_to_check
SELECT count(*) FROM tidings.events;

-- name: walk_events
-- The whole log in the primary key's order (migration 0013: the aggregate's
-- id first): each aggregate's events arrive together, in sequence order, so
-- the walk holds one aggregate at a time, and the key's index hands them out
-- without sorting the log. Payloads are only read where the walk parses them.
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       CASE WHEN e.aggregate_type = 'notification' THEN e.payload END AS payload,
       e.position, e.created_at
FROM tidings.events e
ORDER BY e.aggregate_id, e.aggregate_type, e.instance_id, e.sequence;

-- name: snapshot_counts
SELECT (SELECT coalesce(max(position), 0) FROM tidings.events) AS last_position,
       (SELECT count(*) FROM tidings.pending_notifications) AS pending_rows,
       (SELECT count(*) FROM tidings.users) AS users;

-- name: unreachable_events
-- position-reachable: the store gives an event the position (writing
-- transaction id << 16) + index; a transaction id at or past the snapshot's
-- xmax had not started when the audit began, so an event there was not
-- written by the store, and the ordered reader (which reads below the oldest
-- running transaction) cannot reach it until the ids get there.
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.position,
       e.event_type, pg_snapshot_xmax(pg_current_snapshot())::text::bigint AS next_tx
FROM tidings.events e
WHERE e.position >= (pg_snapshot_xmax(pg_current_snapshot())::text::bigint << 16)
ORDER BY e.position;

-- name: requests_without_source
-- source-exists: a request names its source event; that event must be in the
-- log, in the notification's instance, with the event type the request says.
-- A request whose source fields cannot be read is an unreadable payload
-- (reported by the walk) and is left out here.
SELECT n.instance_id, n.aggregate_id, n.sequence, n.position,
       n.payload #>> '{request,source,aggregate_type}' AS source_type,
       n.payload #>> '{request,source,aggregate_id}' AS source_id,
       n.payload #>> '{request,source,sequence}' AS source_sequence,
       n.payload #>> '{request,source,event_type}' AS source_event_type,
       s.event_type AS found_event_type
FROM tidings.events n
LEFT JOIN tidings.events s
  ON s.instance_id = n.instance_id
 AND s.aggregate_type = n.payload #>> '{request,source,aggregate_type}'
 AND s.aggregate_id = n.payload #>> '{request,source,aggregate_id}'
 AND s.sequence = CASE WHEN jsonb_typeof(n.payload #> '{request,source,sequence}') = 'number'
                       THEN (n.payload #>> '{request,source,sequence}')::numeric END
WHERE n.aggregate_type = 'notification'
  AND n.event_type = 'notification.requested'
  AND jsonb_typeof(n.payload #> '{request,source,aggregate_type}') = 'string'
  AND jsonb_typeof(n.payload #> '{request,source,aggregate_id}') = 'string'
  AND jsonb_typeof(n.payload #> '{request,source,sequence}') = 'number'
  AND jsonb_typeof(n.payload #> '{request,source,event_type}') = 'string'
  AND s.event_type IS DISTINCT FROM n.payload #>> '{request,source,event_type}'
ORDER BY n.instance_id, n.aggregate_id, n.sequence;

-- name: sent_without_source_sent
-- source-sent: a worker appends notification.sent together with the source
-- aggregate's sent event (request.sent_event_type, payload.notification_id),
-- in one transaction; every sent notification must have both.
SELECT sent.instance_id, sent.aggregate_id, sent.sequence, sent.position,
       req.payload #>> '{request,source,aggregate_type}' AS source_type,
       req.payload #>> '{request,source,aggregate_id}' AS source_id,
       req.payload #>> '{request,sent_event_type}' AS sent_event_type
FROM tidings.events sent
JOIN tidings.events req
  ON req.instance_id = sent.instance_id
 AND req.aggregate_type = 'notification'
 AND req.aggregate_id = sent.aggregate_id
 AND req.sequence = 1
 AND req.event_type = 'notification.requested'
WHERE sent.aggregate_type = 'notification'
  AND sent.event_type = 'notification.sent'
  AND jsonb_typeof(req.payload #> '{request,source,aggregate_type}') = 'string'
  AND jsonb_typeof(req.payload #> '{request,source,aggregate_id}') = 'string'
  AND jsonb_typeof(req.payload #> '{request,sent_event_type}') = 'string'
  AND NOT EXISTS (
      SELECT 1
      FROM tidings.events s
      WHERE s.instance_id = sent.instance_id
        AND s.aggregate_type = req.payload #>> '{request,source,aggregate_type}'
        AND s.aggregate_id = req.payload #>> '{request,source,aggregate_id}'
        AND s.event_type = req.payload #>> '{request,sent_event_type}'
        AND s.payload ->> 'notification_id' = sent.aggregate_id)
ORDER BY sent.instance_id, sent.aggregate_id, sent.sequence;

-- name: pending_mismatches
-- pending-queue: the live queue against tidings.pending_from_log (migration
-- 0007), the very rows `tidings projections rebuild pending` would write.
-- Nothing is rebuilt: both are read in the snapshot. The lease columns belong
-- to the workers and are left out; every other column must be equal.
SELECT coalesce(q.instance_id, l.instance_id) AS instance_id,
       coalesce(q.notification_id, l.notification_id) AS notification_id,
       q.sequence AS live_sequence,
       l.sequence AS log_sequence,
       ARRAY(
           SELECT coalesce(a.key, b.key)
           FROM jsonb_each(q.doc) a
           FULL JOIN jsonb_each(l.doc) b ON b.key = a.key
           WHERE a.value IS DISTINCT FROM b.value
           ORDER BY 1
       ) AS differing
FROM (
    SELECT p.instance_id, p.notification_id, p.sequence,
           to_jsonb(p) - 'leased_until' - 'lease_owner' - 'claims' AS doc
    FROM tidings.pending_notifications p
) q
FULL JOIN (
    SELECT v.instance_id, v.notification_id, v.sequence, to_jsonb(v) AS doc
    FROM tidings.pending_from_log v
) l ON l.instance_id = q.instance_id AND l.notification_id = q.notification_id
WHERE q.doc IS DISTINCT FROM l.doc
ORDER BY 1, 2;

-- name: users_copy_create
-- The audit's private users model: same columns, keys and checks as
-- tidings.users, visible to this session only, gone when it disconnects.
CREATE TEMP TABLE IF NOT EXISTS {copy} (LIKE tidings.users INCLUDING ALL);

-- name: users_copy_events_count
SELECT count(*)
FROM tidings.events e
WHERE e.position <= %(upto)s AND e.event_type = ANY(%(event_types)s);

-- name: users_copy_events
-- The users projection's events in position order, as the projector reads
-- them; only up to a checkpoint, where no event can still commit late.
SELECT e.instance_id, e.aggregate_type, e.aggregate_id, e.sequence, e.event_type,
       e.payload, e.owner, e.creator, e.created_at, e.position
FROM tidings.events e
WHERE e.position > %(after)s
  AND e.position <= %(upto)s
  AND e.event_type = ANY(%(event_types)s)
ORDER BY e.position
LIMIT %(limit)s;

-- name: users_mismatches
-- users-read-model: the live model against the private copy. The copy was
-- replayed up to copied_upto, the live model stands at the users checkpoint;
-- a user with events between the two saw a different part of their history
-- in each, so is left out here (users_moved_count counts them).
WITH moved AS (
    SELECT DISTINCT e.instance_id, e.aggregate_id AS user_id
    FROM tidings.events e
    WHERE e.position > least(%(copied_upto)s, %(checkpoint)s)
      AND e.position <= greatest(%(copied_upto)s, %(checkpoint)s)
      AND e.event_type = ANY(%(event_types)s)
),
compared AS (
    SELECT coalesce(u.instance_id, c.instance_id) AS instance_id,
           coalesce(u.user_id, c.user_id) AS user_id,
           u.sequence AS live_sequence,
           c.sequence AS log_sequence,
           to_jsonb(u) AS live_doc,
           to_jsonb(c) AS log_doc
    FROM tidings.users u
    FULL JOIN {copy} c ON c.instance_id = u.instance_id AND c.user_id = u.user_id
)
SELECT x.instance_id, x.user_id, x.live_sequence, x.log_sequence,
       ARRAY(
           SELECT coalesce(a.key, b.key)
           FROM jsonb_each(x.live_doc) a
           FULL JOIN jsonb_each(x.log_doc) b ON b.key = a.key
           WHERE a.value IS DISTINCT FROM b.value
           ORDER BY 1
       ) AS differing
FROM compared x
WHERE x.live_doc IS DISTINCT FROM x.log_doc
  AND NOT EXISTS (SELECT 1 FROM moved m
                  WHERE m.instance_id = x.instance_id AND m.user_id = x.user_id)
ORDER BY 1, 2;

-- name: users_moved_count
-- How many users the comparison leaves out (see users_mismatches).
SELECT count(DISTINCT (e.instance_id, e.aggregate_id))
FROM tidings.events e
WHERE e.position > least(%(copied_upto)s, %(checkpoint)s)
  AND e.position <= greatest(%(copied_upto)s, %(checkpoint)s)
  AND e.event_type = ANY(%(event_types)s);
