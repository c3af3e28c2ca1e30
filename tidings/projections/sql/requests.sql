-- The requests projection (source events -> notification.requested).

-- name: notifications_existing
-- Which of these notifications were requested before (a notification's first
-- event has sequence 1): a re-run or a rebuild requests none twice.
SELECT e.instance_id, e.aggregate_id
FROM unnest(%(instance_ids)s::text[], %(notification_ids)s::text[])
     AS wanted(instance_id, aggregate_id)
JOIN tidings.events e
  ON e.instance_id = wanted.instance_id
 AND e.aggregate_type = 'notification'
 AND e.aggregate_id = wanted.aggregate_id
 AND e.sequence = 1;
