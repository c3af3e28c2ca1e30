-- Appending at pgqueuer's speed: less work per appended event.
--
-- 1. The in-database door, tidings.append_events(jsonb), reads the batch in
--    one pass, each element's fields looked up once: the arrays and, per
--    element, one boolean that is true only when every check of 0011 passes.
--    Only a batch with a false one runs 0011's check statement, which names
--    the first wrong element and its first failing check exactly as before
--    (same order, same messages). Before, the checks took one pass with a
--    subquery over each element's keys, then a second pass built the arrays.
-- 2. tidings.append_events (the arrays) unnests its arrays in the select list
--    (a function scan in FROM copies the whole batch into a tuplestore first),
--    ranks each aggregate's events in a sort on an integer hash of the id
--    first (then the keys as bytes: the same equality, without strcoll), and
--    returns the inserted rows as the insert returns them, already in position
--    order (positions are handed out in batch order), with no sort.
-- 3. Both append_events functions plan their statements once per session
--    (plan_cache_mode = force_generic_plan): a statement planned for the
--    values at hand is re-planned at every call when its estimate for the
--    batch is cheaper than the generic one, which for a worker's 20 outcomes
--    cost more than executing them. Their plans do not depend on the values
--    (index lookups by key, scans of the batch).
-- 4. The pending queue's statement trigger counts the kinds of queue events
--    in one scan and runs only the statements for kinds present (0011 ran a
--    grouping, then all three); a statement of first requests only skips
--    the check for notifications with several queue events.
-- 5. Two indexes an appended event no longer pays for:
--    - events_type_position (event_type, position): its readers (the
--      projector's ordered reads, lag counts, the audit's users copy, `tidings
--      run`'s outcomes) read a position range and take events_position, or
--      have an instance and take events_instance_type_position;
--    - events_created_at (created_at) becomes events_requested_at, the same
--      index over notification.requested events only, which is what the
--      notifications listing walks newest first; `replay --since/--until`
--      reads a range of a BRIN index (events_created_at_range), which costs an
--      append next to nothing since the log is written in time order.

DROP INDEX tidings.events_type_position;
DROP INDEX tidings.events_created_at;
CREATE INDEX events_requested_at ON tidings.events (created_at)
    WHERE aggregate_type = 'notification' AND event_type = 'notification.requested';
CREATE INDEX events_created_at_range ON tidings.events USING brin (created_at);

-- 0011's statement trigger, same projection, fewer statements: one scan of
-- the statement's rows counts each kind of queue event, and only the
-- statements for kinds present run. A statement whose queue events are all
-- first requests (sequence 1: at most one per notification, as in every
-- batch the projector appends) needs no check for notifications with several.
CREATE OR REPLACE FUNCTION tidings.pending_apply_statement() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    requests       bigint;  -- notification.requested events here
    first_requests bigint;  -- those with sequence 1
    retries        bigint;  -- notification.retry.requested events
    settled        bigint;  -- notification.sent and notification.canceled events
    several        bigint;  -- notifications with more than one queue event here
    r              record;
BEGIN
    SELECT count(*) FILTER (WHERE a.event_type = 'notification.requested'),
           count(*) FILTER (WHERE a.event_type = 'notification.requested' AND a.sequence = 1),
           count(*) FILTER (WHERE a.event_type = 'notification.retry.requested'),
           count(*) FILTER (WHERE a.event_type IN ('notification.sent', 'notification.canceled'))
    INTO requests, first_requests, retries, settled
    FROM added a
    WHERE a.aggregate_type = 'notification';
    IF requests + retries + settled = 0 THEN
        RETURN NULL;
    END IF;
    IF requests + retries + settled > first_requests THEN
        SELECT count(*) INTO several
        FROM (
            SELECT 1
            FROM added a
            WHERE a.aggregate_type = 'notification'
              AND a.event_type IN ('notification.requested', 'notification.retry.requested',
                                   'notification.sent', 'notification.canceled')
            GROUP BY a.instance_id, a.aggregate_id
            HAVING count(*) > 1
        ) s;
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
    END IF;

    IF requests > 0 THEN
        INSERT INTO tidings.pending_notifications AS p (
            instance_id, notification_id, kind, sequence, attempts, requested_at, due_at,
            request)
        SELECT a.instance_id, a.aggregate_id, 'request', a.sequence, 0, a.created_at,
               a.created_at, a.payload->'request'
        FROM added a
        WHERE a.aggregate_type = 'notification' AND a.event_type = 'notification.requested'
        ON CONFLICT (instance_id, notification_id) DO NOTHING;
    END IF;

    IF retries > 0 THEN
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
        WHERE a.aggregate_type = 'notification'
          AND a.event_type = 'notification.retry.requested'
          AND p.instance_id = a.instance_id AND p.notification_id = a.aggregate_id;
    END IF;

    IF settled > 0 THEN
        DELETE FROM tidings.pending_notifications p
        USING added a
        WHERE a.aggregate_type = 'notification'
          AND a.event_type IN ('notification.sent', 'notification.canceled')
          AND p.instance_id = a.instance_id AND p.notification_id = a.aggregate_id;
    END IF;

    RETURN NULL;
END;
$$;

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
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
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
        SELECT DISTINCT hashtext(u.i || chr(31) || u.t || chr(31) || u.a) AS lock_key
        FROM (
            SELECT unnest(p_instance_ids) AS i, unnest(p_aggregate_types) AS t,
                   unnest(p_aggregate_ids) AS a
        ) u
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

    -- Each event's sequence: its aggregate's last one plus its rank in the
    -- batch. The rank's partitions are sorted by a hash of the id first (an
    -- integer: most comparisons end there), then by the keys as bytes (equal
    -- is equal in any deterministic collation; bytes compare without strcoll).
    SELECT array_agg(coalesce(h.sequence, 0) + b.nth ORDER BY b.ord),
           array_agg(h.position ORDER BY b.ord)
    INTO sequences, heads
    FROM (
        SELECT u.i, u.t, u.a, u.ord,
               row_number() OVER (
                   PARTITION BY hashtext(u.a), u.i COLLATE "C", u.t COLLATE "C", u.a COLLATE "C"
                   ORDER BY u.ord) AS nth
        FROM (
            SELECT unnest(p_instance_ids) AS i, unnest(p_aggregate_types) AS t,
                   unnest(p_aggregate_ids) AS a, generate_series(1, n) AS ord
        ) u
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
    FROM (
        SELECT unnest(p_expected) AS expected, unnest(sequences) AS actual,
               unnest(heads) AS head, generate_series(1, n) AS ord
    ) c
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

    -- The arrays are unnested in the select list (in lockstep, one row per
    -- element, positions from generate_series alongside), not in FROM, where
    -- a function scan would first copy the whole batch into a tuplestore. The
    -- insert returns its rows in the order it inserts them, the batch's order,
    -- hence position order: no sort.
    RETURN QUERY
    WITH inserted AS (
        INSERT INTO tidings.events AS e (
            instance_id, aggregate_type, aggregate_id, sequence, event_type,
            payload, owner, creator, position)
        SELECT u.i, u.t, u.a, u.seq, u.et, u.payload, coalesce(u.owner, ''),
               coalesce(u.creator, ''), u.position
        FROM (
            SELECT unnest(p_instance_ids) AS i, unnest(p_aggregate_types) AS t,
                   unnest(p_aggregate_ids) AS a, unnest(sequences) AS seq,
                   unnest(p_event_types) AS et, unnest(p_payloads) AS payload,
                   unnest(p_owners) AS owner, unnest(p_creators) AS creator,
                   generate_series(first_pos, first_pos + n - 1) AS position
        ) u
        RETURNING e.position, e.sequence, e.created_at
    )
    SELECT inserted.position, inserted.sequence, inserted.created_at
    FROM inserted;

    -- The wake-up is delivered when (and only if) the transaction commits. Its
    -- lists are sorted as bytes (no strcoll; readers take them as sets).
    wake := jsonb_build_object(
        'position', first_pos + n - 1,
        'instance_ids', (SELECT jsonb_agg(DISTINCT x COLLATE "C") FROM unnest(p_instance_ids) x),
        'event_types', (SELECT jsonb_agg(DISTINCT x COLLATE "C") FROM unnest(p_event_types) x));
    IF length(wake::text) > 7000 THEN
        wake := jsonb_build_object('position', first_pos + n - 1);
    END IF;
    PERFORM pg_notify(p_channel, wake::text);
END;
$$;

-- The door of 0011, same signature, checks and messages; see the header.
CREATE OR REPLACE FUNCTION tidings.append_events(p_events jsonb)
RETURNS TABLE (out_position bigint, out_sequence bigint, out_created_at timestamptz)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
DECLARE
    all_good         boolean;
    problem          text;
    instance_ids     text[];
    aggregate_types  text[];
    aggregate_ids    text[];
    expected         text[];
    event_types      text[];
    payloads         jsonb[];
    owners           text[];
    creators         text[];
    me               text := current_user;  -- the creator of events that name none
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' OR jsonb_array_length(p_events) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'tidings.append_events expects a non-empty JSON array of events';
    END IF;

    -- One pass: the arrays in the batch's order (the order the elements come
    -- out of jsonb_array_elements, which the aggregates keep), and whether
    -- every element passes every check below. Each field is looked up once
    -- (in the subquery, which OFFSET 0 keeps from being merged into this
    -- level, where each use of a field would look it up again). Nothing here can fail on a wrong element: the expected
    -- sequence stays text until the checks pass. An aggregate_type of "user"
    -- or "session" with an event type that starts with it and a dot is what
    -- 0011's two checks of the pair accept.
    SELECT bool_and(CASE
               WHEN jsonb_typeof(f.x) IS DISTINCT FROM 'object' THEN false
               ELSE coalesce(
                   jsonb_typeof(f.i) = 'string' AND f.i <> '""'
                   AND jsonb_typeof(f.a) = 'string' AND f.a <> '""'
                   AND jsonb_typeof(f.et) = 'string'
                   AND ((f.at = '"user"' AND f.et #>> '{}' LIKE 'user.%')
                        OR (f.at = '"session"' AND f.et #>> '{}' LIKE 'session.%'))
                   AND f.x - '{instance_id,aggregate_type,aggregate_id,event_type,payload,'
                             'expected_sequence,owner,creator}'::text[] = '{}'::jsonb
                   AND (f.p IS NULL OR jsonb_typeof(f.p) = 'object')
                   AND (jsonb_typeof(f.c) IS DISTINCT FROM 'object' OR NOT f.c ? 'plain')
                   AND (f.es IS NULL OR f.es = 'null'
                        OR (jsonb_typeof(f.es) = 'number' AND f.es >= '0')),
                   false)
           END),
           array_agg(f.i #>> '{}'),
           array_agg(f.at #>> '{}'),
           array_agg(f.a #>> '{}'),
           array_agg(CASE WHEN jsonb_typeof(f.es) = 'number' THEN f.es #>> '{}' END),
           array_agg(f.et #>> '{}'),
           array_agg(coalesce(f.p, '{}')),
           array_agg(coalesce(f.x->>'owner', '')),
           array_agg(coalesce(f.x->>'creator', me))
    INTO all_good, instance_ids, aggregate_types, aggregate_ids, expected, event_types,
         payloads, owners, creators
    FROM (
        SELECT e.x, e.x->'instance_id' AS i, e.x->'aggregate_type' AS at,
               e.x->'aggregate_id' AS a, e.x->'event_type' AS et, e.x->'payload' AS p,
               e.x->'payload'->'code' AS c, e.x->'expected_sequence' AS es
        FROM jsonb_array_elements(p_events) AS e(x)
        OFFSET 0
    ) f;

    IF NOT all_good THEN
        -- 0011's checks, which name the first wrong element and its first
        -- failing check.
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
                                             'event_type', 'payload', 'expected_sequence',
                                             'owner', 'creator')
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
    END IF;

    RETURN QUERY
    SELECT a.out_position, a.out_sequence, a.out_created_at
    FROM tidings.append_events(
        instance_ids, aggregate_types, aggregate_ids, expected::bigint[], event_types,
        payloads, owners, creators, 'tidings_events') AS a;
END;
$$;

COMMENT ON FUNCTION tidings.append_events(jsonb) IS
    'Append user.*/session.* events in the caller''s transaction (a transactional outbox); see docs/api.md';
