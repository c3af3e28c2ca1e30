-- The pending queue as the log defines it, in one place.
--
-- tidings.pending_from_log is every open notification (its last event is a
-- request or a retry request, and it starts with notification.requested at
-- sequence 1) with the row the queue must hold for it, leases left out.
-- tidings.rebuild_pending() writes it into the queue; `tidings audit verify`
-- compares the live queue with it inside a read-only snapshot, so checking
-- the queue never deletes, rewrites or locks what the workers claim.
CREATE VIEW tidings.pending_from_log AS
SELECT last.instance_id,
       last.aggregate_id AS notification_id,
       CASE WHEN last.event_type = 'notification.requested' THEN 'request' ELSE 'retry' END
           AS kind,
       last.sequence,
       CASE WHEN last.event_type = 'notification.requested' THEN 0
            ELSE tidings.pending_attempt(last.payload) END AS attempts,
       first.created_at AS requested_at,
       CASE WHEN last.event_type = 'notification.requested' THEN last.created_at
            ELSE tidings.pending_due_at(last.payload, last.created_at) END AS due_at,
       coalesce(last.payload->'request', first.payload->'request') AS request,
       last.payload->'notify_user' AS notify_user,
       last.payload->>'backoff' AS backoff,
       last.payload->>'error' AS last_error
FROM (
    SELECT DISTINCT ON (e.instance_id, e.aggregate_id) e.*
    FROM tidings.events e
    WHERE e.aggregate_type = 'notification'
    ORDER BY e.instance_id, e.aggregate_id, e.sequence DESC
) last
JOIN tidings.events first
  ON first.instance_id = last.instance_id
 AND first.aggregate_type = 'notification'
 AND first.aggregate_id = last.aggregate_id
 AND first.sequence = 1
 AND first.event_type = 'notification.requested'
WHERE last.event_type IN ('notification.requested', 'notification.retry.requested');

COMMENT ON VIEW tidings.pending_from_log IS
    'The pending queue rebuilt from the log (leases free): what rebuild_pending() writes';

-- Rebuild the queue from the log: the same rows as before 0007, now read
-- from the view. Leases start free.
CREATE OR REPLACE FUNCTION tidings.rebuild_pending() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rebuilt bigint;
BEGIN
    DELETE FROM tidings.pending_notifications;
    INSERT INTO tidings.pending_notifications (
        instance_id, notification_id, kind, sequence, attempts, requested_at, due_at,
        request, notify_user, backoff, last_error)
    SELECT l.instance_id, l.notification_id, l.kind, l.sequence, l.attempts, l.requested_at,
           l.due_at, l.request, l.notify_user, l.backoff, l.last_error
    FROM tidings.pending_from_log l;
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END;
$$;
