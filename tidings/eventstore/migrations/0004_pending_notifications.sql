-- The pending queue: an inline projection of the notification aggregate.
--
-- One row per open notification (requested or waiting for a retry) with its
-- next due time. A trigger on tidings.events keeps it in the same transaction
-- as the event that changes it, whoever writes that event; settled
-- notifications leave it, so claiming never scans the history.
-- tidings.rebuild_pending() rebuilds it from the log.
CREATE TABLE tidings.pending_notifications (
    instance_id     text        NOT NULL,
    notification_id text        NOT NULL,
    kind            text        NOT NULL CONSTRAINT pending_kind CHECK (kind IN ('request', 'retry')),
    sequence        bigint      NOT NULL,  -- the aggregate's last sequence: what an outcome expects
    attempts        integer     NOT NULL,  -- failed attempts so far
    requested_at    timestamptz NOT NULL,  -- max_ttl counts from here
    due_at          timestamptz NOT NULL,
    leased_until    timestamptz,           -- claimed by a worker until then
    lease_owner     text,
    claims          integer     NOT NULL DEFAULT 0,
    request         jsonb,                 -- the Request, as the log holds it
    notify_user     jsonb,                 -- the user snapshot of the first attempt (retries)
    backoff         text,                  -- the last retry's backoff: the next one grows from it
    last_error      text,
    PRIMARY KEY (instance_id, notification_id)
);

-- The claim walks instances (kind, instance_id) and takes each one's due rows
-- in due order from this index.
CREATE INDEX pending_notifications_claim
    ON tidings.pending_notifications (kind, instance_id, due_at);

-- handle_active_instances asks whether an instance had events lately.
CREATE INDEX events_instance_created_at ON tidings.events (instance_id, created_at);

-- A due time from a retry payload; a malformed one counts as "now", so a bad
-- event cannot block its own append (the worker cancels it when it reads it).
CREATE FUNCTION tidings.pending_due_at(payload jsonb, fallback timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN coalesce((payload->>'due_at')::timestamptz, fallback);
EXCEPTION WHEN others THEN
    RETURN fallback;
END;
$$;

CREATE FUNCTION tidings.pending_attempt(payload jsonb)
RETURNS integer LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN coalesce((payload->>'attempt')::integer, 1);
EXCEPTION WHEN others THEN
    RETURN 1;
END;
$$;

CREATE FUNCTION tidings.pending_apply() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.event_type = 'notification.requested' THEN
        INSERT INTO tidings.pending_notifications AS p (
            instance_id, notification_id, kind, sequence, attempts, requested_at, due_at,
            request)
        VALUES (
            NEW.instance_id, NEW.aggregate_id, 'request', NEW.sequence, 0, NEW.created_at,
            NEW.created_at, NEW.payload->'request')
        ON CONFLICT (instance_id, notification_id) DO NOTHING;
    ELSIF NEW.event_type = 'notification.retry.requested' THEN
        UPDATE tidings.pending_notifications SET
            kind = 'retry',
            sequence = NEW.sequence,
            attempts = tidings.pending_attempt(NEW.payload),
            due_at = tidings.pending_due_at(NEW.payload, NEW.created_at),
            leased_until = NULL,
            lease_owner = NULL,
            request = coalesce(NEW.payload->'request', request),
            notify_user = NEW.payload->'notify_user',
            backoff = NEW.payload->>'backoff',
            last_error = NEW.payload->>'error'
        WHERE instance_id = NEW.instance_id AND notification_id = NEW.aggregate_id;
    ELSIF NEW.event_type IN ('notification.sent', 'notification.canceled') THEN
        DELETE FROM tidings.pending_notifications
        WHERE instance_id = NEW.instance_id AND notification_id = NEW.aggregate_id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_pending_notifications
    AFTER INSERT ON tidings.events
    FOR EACH ROW
    WHEN (NEW.aggregate_type = 'notification')
    EXECUTE FUNCTION tidings.pending_apply();

-- Rebuild the queue from the log: every notification whose last event is a
-- request or a retry request is open. Leases start free.
CREATE FUNCTION tidings.rebuild_pending() RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    rebuilt bigint;
BEGIN
    DELETE FROM tidings.pending_notifications;
    INSERT INTO tidings.pending_notifications (
        instance_id, notification_id, kind, sequence, attempts, requested_at, due_at,
        request, notify_user, backoff, last_error)
    SELECT last.instance_id, last.aggregate_id,
           CASE WHEN last.event_type = 'notification.requested' THEN 'request' ELSE 'retry' END,
           last.sequence,
           CASE WHEN last.event_type = 'notification.requested' THEN 0
                ELSE tidings.pending_attempt(last.payload) END,
           first.created_at,
           CASE WHEN last.event_type = 'notification.requested' THEN last.created_at
                ELSE tidings.pending_due_at(last.payload, last.created_at) END,
           coalesce(last.payload->'request', first.payload->'request'),
           last.payload->'notify_user',
           last.payload->>'backoff',
           last.payload->>'error'
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
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END;
$$;
