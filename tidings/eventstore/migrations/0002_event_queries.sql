-- Indexes for the workers' and projections' queries: by instance and event
-- type in position order, and by creation time for the time filters.
CREATE INDEX events_instance_type_position
    ON tidings.events (instance_id, event_type, position);
CREATE INDEX events_type_position
    ON tidings.events (event_type, position);
CREATE INDEX events_created_at
    ON tidings.events (created_at);
