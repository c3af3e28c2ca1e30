-- Lookups for audit and operations: one aggregate by id in any instance
-- (`tidings history`, `replay --notification`, `replay --user`), and the
-- notifications requested for one user (`replay --user`,
-- `notifications list --user`).
CREATE INDEX events_aggregate_id
    ON tidings.events (aggregate_id, aggregate_type, sequence);

CREATE INDEX events_notification_user
    ON tidings.events ((payload #>> '{request,user_id}'), instance_id)
    WHERE event_type = 'notification.requested';
