-- Appending at set speed: a batch of events costs a few statements, whatever its size.
--
-- 1. The pending queue follows each appending statement instead of each row.
--    The row trigger of 0004 ran a plpgsql function and one statement per
--    notification event; now one statement per kind of change reads the
--    statement's new rows (a transition table, as the feed's trigger does).
--    It is the same projection, in the same transaction: when every
--    notification has one queue event in the statement (every batch of
--    requests the projector appends, every bulk of outcomes a worker
--    appends), the rows change in sets; a statement where one has several (a
--    whole life appended at once) has its queue events applied one by one in
--    log order, exactly as the row trigger did.
-- 2. tidings.append_events takes its per-aggregate locks and checks the
--    expected sequences with one statement each instead of a loop per event.
--    The locks are still taken in one order (hash order), before the
--    transaction's first write, so an aggregate's positions still grow with
--    its sequences; the first event that fails a check is still the one the
--    error names.
-- 3. The in-database door, tidings.append_events(jsonb), checks a whole batch
--    in one statement instead of a loop of statements per element (same
--    checks, order and messages).

-- One queue event applied to its notification's row, as 0004's row trigger did.
CREATE FUNCTION tidings.pending_apply_event(
    p_instance_id text, p_notification_id text, p_event_type text, p_sequence bigint,
    p_payload jsonb, p_created_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_event_type = 'notification.requested' THEN
        INSERT INTO tidings.pending_notifications AS p (
            instance_id, notification_id, kind, sequence, attempts, requested_at, due_at,
            request)
        VALUES (
            p_instance_id, p_notification_id, 'request', p_sequence, 0, p_created_at,
            p_created_at, p_payload->'request')
        ON CONFLICT (instance_id, notification_id) DO NOTHING;
    ELSIF p_event_type = 'notification.retry.requested' THEN
        UPDATE tidings.pending_notifications SET
            kind = 'retry',
            sequence = p_sequence,
            attempts = tidings.pending_attempt(p_payload),
            due_at = tidings.pending_due_at(p_payload, p_created_at),
            leased_until = NULL,
            lease_owner = NULL,
            request = coalesce(p_payload->'request', request),
            notify_user = p_payload->'notify_user',
            backoff = p_payload->>'backoff',
            last_error = p_payload->>'error'
        WHERE instance_id = p_instance_id AND notification_id = p_notification_id;
    ELSIF p_event_type IN ('notification.sent', 'notification.canceled') THEN
        DELETE FROM tidings.pending_notifications
        WHERE instance_id = p_instance_id AND notification_id = p_notification_id;
    END IF;
END;
$$;

-- The statement's queue events: requests insert, retries update, sends and
-- cancels delete. When each notification has one queue event here (the
-- projector's requests, the workers' outcomes), rows of different
-- notifications are independent and the three statements run in sets. When
-- one has several (a whole life appended at once: imports, tests), the
-- statement's queue events are applied one by one in log order, as 0004's row
-- trigger did. Either way the cost grows with the statement's size, never its
-- square.
CREATE FUNCTION tidings.pending_apply_statement() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    touched bigint;  -- notifications with queue events here
    several bigint;  -- those with more than one
    r       record;
BEGIN
    SELECT count(*), count(*) FILTER (WHERE s.n > 1) INTO touched, several
    FROM (
        SELECT count(*) AS n
        FROM added a
        WHERE a.aggregate_type = 'notification'
          AND a.event_type IN ('notification.requested', 'notification.retry.requested',
                               'notification.sent', 'notification.canceled')
        GROUP BY a.instance_id, a.aggregate_id
    ) s;
    IF touched = 0 THEN
        RETURN NULL;
    END IF;
    IF several > 0 THEN
        FOR r IN
            SELECT a.instance_id, a.aggregate_id, a.event_type, a.sequence, a.payload,
                   a.created_at
            FROM added a
            WHERE a.aggregate_type = 'notification'
              AND a.event_type IN ('notification.requested', 'notification.retry.requested',
                                   'notification.sent', 'notification.canceled')
            ORDER BY a.position
        LOOP
            PERFORM tidings.pending_apply_event(r.instance_id, r.aggregate_id, r.event_type,
                                                r.sequence, r.payload, r.created_at);
        END LOOP;
        RETURN NULL;
    END IF;

    INSERT INTO tidings.pending_notifications AS p (
        instance_id, notification_id, kind, sequence, attempts, requested_at, due_at, request)
    SELECT a.instance_id, a.aggregate_id, 'request', a.sequence, 0, a.created_at, a.created_at,
           a.payload->'request'
    FROM added a
    WHERE a.aggregate_type = 'notification' AND a.event_type = 'notification.requested'
    ON CONFLICT (instance_id, notification_id) DO NOTHING;

    UPDATE tidings.pending_notifications p SET
        kind = 'retry',
        sequence = a.sequence,
        attempts = tidings.pending_attempt(a.payload),
        due_at = tidings.pending_due_at(a.payload, a.created_at),
        leased_until = NULL,
        lease_owner = NULL,
        request = coalesce(a.payload->'request', p.request),
        notify_user = a.payload->'notify_user',
        backoff = a.payload->>'backoff',
        last_error = a.payload->>'error'
    FROM added a
    WHERE a.aggregate_type = 'notification' AND a.event_type = 'notification.retry.requested'
      AND p.instance_id = a.instance_id AND p.notification_id = a.aggregate_id;

    DELETE FROM tidings.pending_notifications p
    USING added a
    WHERE a.aggregate_type = 'notification'
      AND a.event_type IN ('notification.sent', 'notification.canceled')
      AND p.instance_id = a.instance_id AND p.notification_id = a.aggregate_id;

    RETURN NULL;
END;
$$;

DROP TRIGGER events_pending_notifications ON tidings.events;
DROP FUNCTION tidings.pending_apply();

CREATE TRIGGER events_pending_notifications
    AFTER INSERT ON tidings.events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT
    EXECUTE FUNCTION tidings.pending_apply_statement();

-- The array form of 0001, same signature and behaviour; see the header.
CREATE OR REPLACE FUNCTION tidings.append_events(
    p_instance_ids    text[],
    p_aggregate_types text[],
    p_aggregate_ids   text[],
    p_expected        bigint[],
    p_event_types     text[],
    p_payloads        jsonb[],
    p_owners          text[],
    p_creators        text[],
    p_channel         text
) RETURNS TABLE (out_position bigint, out_sequence bigint, out_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    n          integer := coalesce(array_length(p_event_types, 1), 0);
    tx_base    bigint;
    first_pos  bigint;
    sequences  bigint[];  -- the sequence each event gets
    heads      bigint[];  -- the position of its aggregate's last stored event
    bad        record;
    wake       jsonb;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    -- One lock per aggregate, taken in hash order (the subquery's ORDER BY is
    -- the order the outer level calls the function in): two appends on the
    -- same aggregates queue instead of deadlocking.
    PERFORM pg_advisory_xact_lock(7101, k.lock_key)
    FROM (
        SELECT DISTINCT hashtext(i || chr(31) || t || chr(31) || a) AS lock_key
        FROM unnest(p_instance_ids, p_aggregate_types, p_aggregate_ids) AS u(i, t, a)
        ORDER BY 1
    ) k;

    tx_base := (pg_current_xact_id()::text::bigint) << 16;
    SELECT coalesce(max(e.position) + 1, tx_base) INTO first_pos
    FROM tidings.events e
    WHERE e.position >= tx_base AND e.position < tx_base + 65536;
    IF first_pos + n > tx_base + 65536 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'TD002',
            MESSAGE = 'one transaction may append at most 65536 events';
    END IF;

    -- Each event's sequence: its aggregate's last one plus its rank in the batch.
    SELECT array_agg(coalesce(h.sequence, 0) + b.nth ORDER BY b.ord),
           array_agg(h.position ORDER BY b.ord)
    INTO sequences, heads
    FROM (
        SELECT u.i, u.t, u.a, u.ord,
               row_number() OVER (PARTITION BY u.i, u.t, u.a ORDER BY u.ord) AS nth
        FROM unnest(p_instance_ids, p_aggregate_types, p_aggregate_ids)
             WITH ORDINALITY AS u(i, t, a, ord)
    ) b
    LEFT JOIN LATERAL (
        SELECT e.sequence, e.position
        FROM tidings.events e
        WHERE e.instance_id = b.i AND e.aggregate_type = b.t AND e.aggregate_id = b.a
        ORDER BY e.sequence DESC
        LIMIT 1
    ) h ON true;

    -- The first event whose expected sequence does not hold, or whose
    -- aggregate's last event lies at or after this transaction's positions.
    SELECT c.ord, c.expected, c.actual
    INTO bad
    FROM unnest(p_expected, sequences, heads) WITH ORDINALITY AS c(expected, actual, head, ord)
    WHERE (c.expected IS NOT NULL AND c.expected <> c.actual - 1) OR c.head >= first_pos
    ORDER BY c.ord
    LIMIT 1;
    IF FOUND THEN
        IF bad.expected IS NOT NULL AND bad.expected <> bad.actual - 1 THEN
            RAISE EXCEPTION USING
                ERRCODE = 'TD001',
                MESSAGE = format(
                    'concurrent append to %s/%s/%s: expected sequence %s, the aggregate is at %s',
                    p_instance_ids[bad.ord], p_aggregate_types[bad.ord],
                    p_aggregate_ids[bad.ord], bad.expected, bad.actual - 1),
                DETAIL = jsonb_build_object(
                    'index', bad.ord - 1,
                    'instance_id', p_instance_ids[bad.ord],
                    'aggregate_type', p_aggregate_types[bad.ord],
                    'aggregate_id', p_aggregate_ids[bad.ord],
                    'expected_sequence', bad.expected,
                    'actual_sequence', bad.actual - 1)::text;
        END IF;
        RAISE EXCEPTION USING
            ERRCODE = 'TD003',
            MESSAGE = format(
                'append to %s/%s/%s would land before its last event: the transaction '
                'wrote before that event committed; retry in a new transaction',
                p_instance_ids[bad.ord], p_aggregate_types[bad.ord], p_aggregate_ids[bad.ord]),
            DETAIL = jsonb_build_object(
                'index', bad.ord - 1,
                'instance_id', p_instance_ids[bad.ord],
                'aggregate_type', p_aggregate_types[bad.ord],
                'aggregate_id', p_aggregate_ids[bad.ord],
                'expected_sequence', bad.expected,
                'actual_sequence', bad.actual - 1)::text;
    END IF;

    RETURN QUERY
    WITH inserted AS (
        INSERT INTO tidings.events AS e (
            instance_id, aggregate_type, aggregate_id, sequence, event_type,
            payload, owner, creator, position)
        SELECT u.i, u.t, u.a, u.seq, u.et, u.payload,
               coalesce(u.owner, ''), coalesce(u.creator, ''), first_pos + u.ord - 1
        FROM unnest(p_instance_ids, p_aggregate_types, p_aggregate_ids, sequences,
                    p_event_types, p_payloads, p_owners, p_creators)
             WITH ORDINALITY AS u(i, t, a, seq, et, payload, owner, creator, ord)
        RETURNING e.position, e.sequence, e.created_at
    )
    SELECT inserted.position, inserted.sequence, inserted.created_at
    FROM inserted
    ORDER BY inserted.position;

    -- The wake-up is delivered when (and only if) the transaction commits.
    wake := jsonb_build_object(
        'position', first_pos + n - 1,
        'instance_ids', (SELECT jsonb_agg(DISTINCT x) FROM unnest(p_instance_ids) x),
        'event_types', (SELECT jsonb_agg(DISTINCT x) FROM unnest(p_event_types) x));
    IF length(wake::text) > 7000 THEN
        wake := jsonb_build_object('position', first_pos + n - 1);
    END IF;
    PERFORM pg_notify(p_channel, wake::text);
END;
$$;

-- The in-database door of 0008, same signature, checks and messages: each
-- element's checks in one statement over the batch (it was a loop of
-- statements per element, about ten times the cost of the append itself),
-- then the arrays in one pass. The first wrong element is named, with the
-- first of its checks that fails, in the order 0008 checked them.
CREATE OR REPLACE FUNCTION tidings.append_events(p_events jsonb)
RETURNS TABLE (out_position bigint, out_sequence bigint, out_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    problem          text;
    instance_ids     text[];
    aggregate_types  text[];
    aggregate_ids    text[];
    expected         bigint[];
    event_types      text[];
    payloads         jsonb[];
    owners           text[];
    creators         text[];
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' OR jsonb_array_length(p_events) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'tidings.append_events expects a non-empty JSON array of events';
    END IF;

    SELECT c.problem INTO problem
    FROM (
        SELECT t.o, CASE
            WHEN jsonb_typeof(t.x) IS DISTINCT FROM 'object' THEN
                format('event %s: expected a JSON object', t.o - 1)
            WHEN jsonb_typeof(t.x->'instance_id') IS DISTINCT FROM 'string'
                 OR t.x->>'instance_id' = '' THEN
                format('event %s: %s must be a non-empty string', t.o - 1, 'instance_id')
            WHEN jsonb_typeof(t.x->'aggregate_type') IS DISTINCT FROM 'string'
                 OR t.x->>'aggregate_type' = '' THEN
                format('event %s: %s must be a non-empty string', t.o - 1, 'aggregate_type')
            WHEN jsonb_typeof(t.x->'aggregate_id') IS DISTINCT FROM 'string'
                 OR t.x->>'aggregate_id' = '' THEN
                format('event %s: %s must be a non-empty string', t.o - 1, 'aggregate_id')
            WHEN jsonb_typeof(t.x->'event_type') IS DISTINCT FROM 'string'
                 OR t.x->>'event_type' = '' THEN
                format('event %s: %s must be a non-empty string', t.o - 1, 'event_type')
            WHEN EXISTS (
                SELECT 1 FROM jsonb_object_keys(t.x) AS k(name)
                WHERE k.name NOT IN ('instance_id', 'aggregate_type', 'aggregate_id',
                                     'event_type', 'payload', 'expected_sequence', 'owner',
                                     'creator')
            ) THEN
                format('event %s: unknown field %s', t.o - 1, (
                    SELECT k.name FROM jsonb_object_keys(t.x) WITH ORDINALITY AS k(name, n)
                    WHERE k.name NOT IN ('instance_id', 'aggregate_type', 'aggregate_id',
                                         'event_type', 'payload', 'expected_sequence', 'owner',
                                         'creator')
                    ORDER BY k.n
                    LIMIT 1))
            WHEN NOT (t.x->>'event_type' LIKE 'user.%' OR t.x->>'event_type' LIKE 'session.%')
                 OR t.x->>'aggregate_type' <> split_part(t.x->>'event_type', '.', 1) THEN
                format('event %s: %s on a %s aggregate: only user.* events on user '
                       'and session.* events on session aggregates may be appended',
                       t.o - 1, t.x->>'event_type', t.x->>'aggregate_type')
            WHEN jsonb_typeof(coalesce(t.x->'payload', '{}')) <> 'object' THEN
                format('event %s: payload must be a JSON object', t.o - 1)
            WHEN jsonb_typeof(t.x->'payload'->'code') = 'object'
                 AND t.x->'payload'->'code' ? 'plain' THEN
                format('event %s: payload.code must be encrypted here; send plain '
                       'codes through POST /v1/events', t.o - 1)
            WHEN t.x ? 'expected_sequence'
                 AND jsonb_typeof(t.x->'expected_sequence') NOT IN ('null', 'number') THEN
                format('event %s: expected_sequence must be a number >= 0', t.o - 1)
            WHEN jsonb_typeof(t.x->'expected_sequence') = 'number'
                 AND (t.x->>'expected_sequence')::numeric < 0 THEN
                format('event %s: expected_sequence must be a number >= 0', t.o - 1)
        END AS problem
        FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o)
    ) c
    WHERE c.problem IS NOT NULL
    ORDER BY c.o
    LIMIT 1;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = problem;
    END IF;

    SELECT array_agg(t.x->>'instance_id' ORDER BY t.o),
           array_agg(t.x->>'aggregate_type' ORDER BY t.o),
           array_agg(t.x->>'aggregate_id' ORDER BY t.o),
           array_agg((t.x->>'expected_sequence')::bigint ORDER BY t.o),
           array_agg(t.x->>'event_type' ORDER BY t.o),
           array_agg(coalesce(t.x->'payload', '{}') ORDER BY t.o),
           array_agg(coalesce(t.x->>'owner', '') ORDER BY t.o),
           array_agg(coalesce(t.x->>'creator', current_user) ORDER BY t.o)
    INTO instance_ids, aggregate_types, aggregate_ids, expected, event_types, payloads,
         owners, creators
    FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o);

    RETURN QUERY
    SELECT a.out_position, a.out_sequence, a.out_created_at
    FROM tidings.append_events(
        instance_ids, aggregate_types, aggregate_ids, expected, event_types, payloads,
        owners, creators, 'tidings_events') AS a;
END;
$$;

COMMENT ON FUNCTION tidings.append_events(jsonb) IS
    'Append user.*/session.* events in the caller''s transaction (a transactional outbox); see docs/api.md';
