-- Finding notifications for operators (`tidings notifications list`).

-- name: list_notifications
-- The newest notifications by request time that match the filters, with their
-- state from the log, in one statement that never reads the whole log.
--
-- Every optional filter is written "param IS NULL OR ...". psycopg binds the
-- values to an unnamed statement, which PostgreSQL plans with the values in
-- hand: an unused filter folds away, and a used one can take its index (user:
-- events_notification_user; instance: events_instance_type_position; time:
-- events_requested_at, walked backwards for "newest first").
--
-- `candidates` has three ways in, each with its own order and limit; the
-- parameters switch off (fold to "One-Time Filter: false") those that do not
-- apply:
-- - no state filter: the requests in the log, newest first, up to the limit;
-- - pending/retrying: the pending queue, which holds exactly the open
--   notifications (its requested_at is the request's created_at). It is small
--   by design, so this never walks the history for the few open ones;
-- - sent/canceled: requests with such an event, as a semi-join, so the planner
--   can walk the requests newest first for the common state (sent) or start
--   from the canceled events when they are rare.
-- Mixed states use both of the last two and merge them.
--
-- `page` keeps the limit, then reads each one's request and last event by
-- primary key. The state is always the log's last event (the queue only
-- narrows the search, so a row it holds by mistake still shows its true
-- state); the queue adds the next due time and the lease. Only named fields
-- leave the payloads: never the code, its ciphertext, the URL template or args.
-- Ties in request time (one projector batch) are broken by instance and id,
-- the same way in every branch.
WITH candidates AS (
    (SELECT r.instance_id, r.aggregate_id, r.created_at
     FROM tidings.events r
     WHERE %(last_types)s::text[] IS NULL
       AND r.event_type = 'notification.requested'
       AND r.aggregate_type = 'notification'
       AND (%(instances)s::text[] IS NULL OR r.instance_id = ANY(%(instances)s::text[]))
       AND (%(user_id)s::text IS NULL OR r.payload #>> '{request,user_id}' = %(user_id)s::text)
       AND (%(message_types)s::text[] IS NULL
            OR r.payload #>> '{request,message_type}' = ANY(%(message_types)s::text[]))
       AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s::timestamptz)
       AND (%(until)s::timestamptz IS NULL OR r.created_at < %(until)s::timestamptz)
     ORDER BY r.created_at DESC, r.instance_id DESC, r.aggregate_id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT p.instance_id, p.notification_id, p.requested_at
     FROM tidings.pending_notifications p
     WHERE %(open_kinds)s::text[] IS NOT NULL
       AND p.kind = ANY(%(open_kinds)s::text[])
       AND (%(instances)s::text[] IS NULL OR p.instance_id = ANY(%(instances)s::text[]))
       AND (%(user_id)s::text IS NULL OR p.request ->> 'user_id' = %(user_id)s::text)
       AND (%(message_types)s::text[] IS NULL
            OR p.request ->> 'message_type' = ANY(%(message_types)s::text[]))
       AND (%(since)s::timestamptz IS NULL OR p.requested_at >= %(since)s::timestamptz)
       AND (%(until)s::timestamptz IS NULL OR p.requested_at < %(until)s::timestamptz)
     ORDER BY p.requested_at DESC, p.instance_id DESC, p.notification_id DESC
     LIMIT %(limit)s)
    UNION ALL
    (SELECT r.instance_id, r.aggregate_id, r.created_at
     FROM tidings.events r
     WHERE %(settled_types)s::text[] IS NOT NULL
       AND r.event_type = 'notification.requested'
       AND r.aggregate_type = 'notification'
       AND (%(instances)s::text[] IS NULL OR r.instance_id = ANY(%(instances)s::text[]))
       AND (%(user_id)s::text IS NULL OR r.payload #>> '{request,user_id}' = %(user_id)s::text)
       AND (%(message_types)s::text[] IS NULL
            OR r.payload #>> '{request,message_type}' = ANY(%(message_types)s::text[]))
       AND (%(since)s::timestamptz IS NULL OR r.created_at >= %(since)s::timestamptz)
       AND (%(until)s::timestamptz IS NULL OR r.created_at < %(until)s::timestamptz)
       AND EXISTS (
         SELECT 1 FROM tidings.events s
         WHERE s.instance_id = r.instance_id
           AND s.aggregate_type = 'notification'
           AND s.aggregate_id = r.aggregate_id
           AND s.event_type = ANY(%(settled_types)s::text[]))
     ORDER BY r.created_at DESC, r.instance_id DESC, r.aggregate_id DESC
     LIMIT %(limit)s)
),
page AS (
    SELECT c.instance_id, c.aggregate_id, c.created_at,
           req.payload #>> '{request,user_id}' AS user_id,
           req.payload #>> '{request,message_type}' AS message_type,
           req.payload #>> '{request,channel}' AS channel,
           latest.event_type AS last_type, latest.sequence AS last_sequence,
           latest.created_at AS last_at, latest.payload AS last_payload
    FROM (SELECT * FROM candidates
          ORDER BY created_at DESC, instance_id DESC, aggregate_id DESC
          LIMIT %(limit)s) c
    JOIN tidings.events req
      ON req.instance_id = c.instance_id
     AND req.aggregate_type = 'notification'
     AND req.aggregate_id = c.aggregate_id
     AND req.sequence = 1
    CROSS JOIN LATERAL (
        -- The feed's marks (seen, read, ...) after an in-app send change no state.
        SELECT e.event_type, e.sequence, e.created_at, e.payload
        FROM tidings.events e
        WHERE e.instance_id = c.instance_id
          AND e.aggregate_type = 'notification'
          AND e.aggregate_id = c.aggregate_id
          AND e.event_type NOT IN ('notification.seen', 'notification.read',
                                   'notification.unread', 'notification.archived',
                                   'notification.unarchived')
        ORDER BY e.sequence DESC
        LIMIT 1
    ) latest
    WHERE %(last_types)s::text[] IS NULL OR latest.event_type = ANY(%(last_types)s::text[])
)
SELECT pg.instance_id,
       pg.aggregate_id AS notification_id,
       pg.user_id,
       pg.message_type,
       pg.channel,
       pg.last_type,
       CASE WHEN pg.last_type = 'notification.canceled'
            THEN pg.last_payload ->> 'reason' END AS cancel_reason,
       CASE WHEN pg.last_type = 'notification.requested' THEN 0
            WHEN pg.last_payload ->> 'attempt' ~ '^[0-9]{1,9}$'
            THEN (pg.last_payload ->> 'attempt')::integer END AS attempts,
       CASE WHEN pg.last_type IN ('notification.retry.requested', 'notification.canceled')
            THEN pg.last_payload ->> 'error'
            ELSE prev.payload ->> 'error' END AS last_error,
       p.due_at AS next_due_at,
       CASE WHEN p.leased_until > %(now)s::timestamptz THEN p.leased_until END AS leased_until,
       CASE WHEN p.leased_until > %(now)s::timestamptz THEN p.lease_owner END AS lease_owner,
       pg.created_at AS requested_at,
       CASE WHEN pg.last_type IN ('notification.sent', 'notification.canceled')
            THEN pg.last_at END AS settled_at,
       CASE WHEN pg.last_type = 'notification.sent'
            THEN pg.last_payload ->> 'channel' END AS sent_via,
       CASE WHEN pg.last_type = 'notification.sent'
            THEN pg.last_payload ->> 'provider_message_id' END AS provider_message_id
FROM page pg
LEFT JOIN tidings.pending_notifications p
       ON p.instance_id = pg.instance_id
      AND p.notification_id = pg.aggregate_id
      AND pg.last_type IN ('notification.requested', 'notification.retry.requested')
-- A notification sent after failed attempts: the error of the last one.
LEFT JOIN tidings.events prev
       ON prev.instance_id = pg.instance_id
      AND prev.aggregate_type = 'notification'
      AND prev.aggregate_id = pg.aggregate_id
      AND prev.sequence = pg.last_sequence - 1
      AND prev.event_type = 'notification.retry.requested'
      AND pg.last_type = 'notification.sent'
ORDER BY pg.created_at DESC, pg.instance_id DESC, pg.aggregate_id DESC;
