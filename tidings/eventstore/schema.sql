-- tidings: the current schema, what a fresh install looks like
-- (migrations 0001..0013 applied).
--
-- GENERATED from tidings/eventstore/migrations by `python3 dev.py schema`:
-- never edit it by hand. Change the schema with a new migration, then
-- regenerate this file; tests/test_schema.py checks that the two agree.

--
-- PostgreSQL database dump
--


SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: tidings; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA tidings;


--
-- Name: api_keys_apply(); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.api_keys_apply() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF NEW.event_type = 'apikey.created' THEN
        INSERT INTO tidings.api_keys (
            key_hash, instance_id, key_id, name, scopes, created_at, created_by)
        VALUES (
            NEW.payload->>'key_hash', NEW.instance_id, NEW.aggregate_id,
            coalesce(NEW.payload->>'name', ''),
            coalesce(ARRAY(SELECT jsonb_array_elements_text(NEW.payload->'scopes')), '{}'),
            NEW.created_at, NEW.creator)
        ON CONFLICT (key_hash) DO NOTHING;
    ELSIF NEW.event_type = 'apikey.revoked' THEN
        UPDATE tidings.api_keys
        SET revoked_at = NEW.created_at, revoked_by = NEW.creator
        WHERE instance_id = NEW.instance_id AND key_id = NEW.aggregate_id
          AND revoked_at IS NULL;
    END IF;
    RETURN NULL;
END;
$$;


--
-- Name: append_events(jsonb); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.append_events(p_events jsonb) RETURNS TABLE(out_position bigint, out_sequence bigint, out_created_at timestamp with time zone)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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


--
-- Name: FUNCTION append_events(p_events jsonb); Type: COMMENT; Schema: tidings; Owner: -
--

COMMENT ON FUNCTION tidings.append_events(p_events jsonb) IS 'Append user.*/session.* events in the caller''s transaction (a transactional outbox); see docs/api.md';


--
-- Name: append_events(text[], text[], text[], bigint[], text[], jsonb[], text[], text[], text); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.append_events(p_instance_ids text[], p_aggregate_types text[], p_aggregate_ids text[], p_expected bigint[], p_event_types text[], p_payloads jsonb[], p_owners text[], p_creators text[], p_channel text) RETURNS TABLE(out_position bigint, out_sequence bigint, out_created_at timestamp with time zone)
    LANGUAGE plpgsql
    SET plan_cache_mode TO 'force_generic_plan'
    AS $$
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


--
-- Name: feed_apply(); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.feed_apply() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    m record;
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM added a
        WHERE a.aggregate_type = 'notification'
          AND (a.event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                                'notification.archived', 'notification.unarchived')
               OR (a.event_type = 'notification.sent' AND a.payload ? 'inapp'))
    ) THEN
        RETURN NULL;
    END IF;
    WITH items AS (
        INSERT INTO tidings.feed_items (
            instance_id, notification_id, user_id, position, sequence, sent_at, message_type,
            lang, title, body, action_url, data)
        SELECT a.instance_id, a.aggregate_id, coalesce(a.payload #>> '{inapp,user_id}', ''),
               a.position, a.sequence, a.created_at,
               coalesce(a.payload #>> '{inapp,message_type}', ''),
               coalesce(a.payload #>> '{inapp,lang}', ''),
               coalesce(a.payload #>> '{inapp,title}', ''),
               coalesce(a.payload #>> '{inapp,body}', ''),
               coalesce(a.payload #>> '{inapp,action_url}', ''),
               coalesce(a.payload #> '{inapp,data}', '{}'::jsonb)
        FROM added a
        WHERE a.aggregate_type = 'notification' AND a.event_type = 'notification.sent'
          AND a.payload ? 'inapp' AND jsonb_typeof(a.payload -> 'inapp') = 'object'
        ORDER BY a.position
        ON CONFLICT (instance_id, notification_id) DO NOTHING
        RETURNING instance_id, user_id
    )
    INSERT INTO tidings.feed_counts AS c (instance_id, user_id, total, unread, unseen)
    SELECT i.instance_id, i.user_id, count(*), count(*), count(*)
    FROM items i
    GROUP BY i.instance_id, i.user_id
    ORDER BY i.instance_id, i.user_id
    ON CONFLICT (instance_id, user_id) DO UPDATE SET
        total = c.total + excluded.total,
        unread = c.unread + excluded.unread,
        unseen = c.unseen + excluded.unseen;
    FOR m IN
        SELECT a.instance_id, a.aggregate_id, a.payload ->> 'user_id' AS user_id, a.event_type,
               a.sequence, a.position, a.created_at
        FROM added a
        WHERE a.aggregate_type = 'notification'
          AND a.event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                               'notification.archived', 'notification.unarchived')
        ORDER BY a.position
    LOOP
        PERFORM tidings.feed_mark(m.instance_id, m.aggregate_id, m.user_id, m.event_type,
                                  m.sequence, m.position, m.created_at);
    END LOOP;
    RETURN NULL;
END;
$$;


--
-- Name: feed_mark(text, text, text, text, bigint, bigint, timestamp with time zone); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.feed_mark(p_instance_id text, p_notification_id text, p_user_id text, p_event_type text, p_sequence bigint, p_position bigint, p_at timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    AS $$
DECLARE
    item     tidings.feed_items%ROWTYPE;
    seen     timestamptz;
    was_read timestamptz;
    arch     timestamptz;
    d_total  integer;
    d_unread integer;
    d_unseen integer;
BEGIN
    -- The user's counts are locked before the item, as retention locks them
    -- before it drops items: one order, so the two never deadlock.
    PERFORM 1 FROM tidings.feed_counts
    WHERE instance_id = p_instance_id AND user_id = p_user_id
    FOR UPDATE;
    SELECT * INTO item FROM tidings.feed_items
    WHERE instance_id = p_instance_id AND notification_id = p_notification_id
    FOR UPDATE;
    IF NOT FOUND OR p_position < item.position THEN
        RETURN;
    END IF;
    seen := item.seen_at;
    was_read := item.read_at;
    arch := item.archived_at;
    CASE p_event_type
        WHEN 'notification.seen' THEN
            seen := coalesce(seen, p_at);
        WHEN 'notification.read' THEN
            seen := coalesce(seen, p_at);
            was_read := coalesce(was_read, p_at);
        WHEN 'notification.unread' THEN
            was_read := NULL;
        WHEN 'notification.archived' THEN
            arch := coalesce(arch, p_at);
        WHEN 'notification.unarchived' THEN
            arch := NULL;
        ELSE
            NULL;
    END CASE;
    UPDATE tidings.feed_items SET
        seen_at = seen, read_at = was_read, archived_at = arch, sequence = p_sequence
    WHERE instance_id = p_instance_id AND notification_id = p_notification_id;

    -- What the item counts for after the mark, minus what it counted for before.
    d_total := (arch IS NULL)::integer - (item.archived_at IS NULL)::integer;
    d_unread := (arch IS NULL AND was_read IS NULL)::integer
              - (item.archived_at IS NULL AND item.read_at IS NULL)::integer;
    d_unseen := (arch IS NULL AND seen IS NULL)::integer
              - (item.archived_at IS NULL AND item.seen_at IS NULL)::integer;
    IF d_total <> 0 OR d_unread <> 0 OR d_unseen <> 0 THEN
        UPDATE tidings.feed_counts SET
            total = total + d_total, unread = unread + d_unread, unseen = unseen + d_unseen
        WHERE instance_id = item.instance_id AND user_id = item.user_id;
    END IF;
END;
$$;


--
-- Name: pending_apply_event(text, text, text, bigint, jsonb, timestamp with time zone); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.pending_apply_event(p_instance_id text, p_notification_id text, p_event_type text, p_sequence bigint, p_payload jsonb, p_created_at timestamp with time zone) RETURNS void
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: pending_apply_statement(); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.pending_apply_statement() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
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


--
-- Name: pending_attempt(jsonb); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.pending_attempt(payload jsonb) RETURNS integer
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN coalesce((payload->>'attempt')::integer, 1);
EXCEPTION WHEN others THEN
    RETURN 1;
END;
$$;


--
-- Name: pending_due_at(jsonb, timestamp with time zone); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.pending_due_at(payload jsonb, fallback timestamp with time zone) RETURNS timestamp with time zone
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
    RETURN coalesce((payload->>'due_at')::timestamptz, fallback);
EXCEPTION WHEN others THEN
    RETURN fallback;
END;
$$;


--
-- Name: rebuild_api_keys(); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.rebuild_api_keys() RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    rebuilt bigint;
BEGIN
    DELETE FROM tidings.api_keys;
    INSERT INTO tidings.api_keys (
        key_hash, instance_id, key_id, name, scopes, created_at, created_by,
        revoked_at, revoked_by)
    SELECT c.payload->>'key_hash', c.instance_id, c.aggregate_id,
           coalesce(c.payload->>'name', ''),
           coalesce(ARRAY(SELECT jsonb_array_elements_text(c.payload->'scopes')), '{}'),
           c.created_at, c.creator, r.created_at, r.creator
    FROM tidings.events c
    LEFT JOIN LATERAL (
        SELECT x.created_at, x.creator
        FROM tidings.events x
        WHERE x.instance_id = c.instance_id AND x.aggregate_type = 'apikey'
          AND x.aggregate_id = c.aggregate_id AND x.event_type = 'apikey.revoked'
        ORDER BY x.sequence
        LIMIT 1
    ) r ON true
    WHERE c.aggregate_type = 'apikey' AND c.event_type = 'apikey.created'
    ON CONFLICT (key_hash) DO NOTHING;
    GET DIAGNOSTICS rebuilt = ROW_COUNT;
    RETURN rebuilt;
END;
$$;


--
-- Name: rebuild_feed(timestamp with time zone); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.rebuild_feed(p_since timestamp with time zone) RETURNS bigint
    LANGUAGE plpgsql
    AS $$
DECLARE
    rebuilt bigint;
BEGIN
    DELETE FROM tidings.feed_items;
    DELETE FROM tidings.feed_counts;
    INSERT INTO tidings.feed_items
    SELECT f.instance_id, f.notification_id, f.user_id, f.position, f.sequence, f.sent_at,
           f.message_type, f.lang, f.title, f.body, f.action_url, f.data, f.seen_at,
           f.read_at, f.archived_at
    FROM tidings.feed_from_log f;
    INSERT INTO tidings.feed_counts (instance_id, user_id, total, unread, unseen, pruned_through)
    SELECT i.instance_id, i.user_id,
           count(*) FILTER (WHERE i.archived_at IS NULL AND i.sent_at >= p_since),
           count(*) FILTER (WHERE i.archived_at IS NULL AND i.read_at IS NULL
                              AND i.sent_at >= p_since),
           count(*) FILTER (WHERE i.archived_at IS NULL AND i.seen_at IS NULL
                              AND i.sent_at >= p_since),
           coalesce(max(i.position) FILTER (WHERE i.sent_at < p_since), 0)
    FROM tidings.feed_items i
    GROUP BY i.instance_id, i.user_id;
    DELETE FROM tidings.feed_items WHERE sent_at < p_since;
    SELECT count(*) INTO rebuilt FROM tidings.feed_items;
    RETURN rebuilt;
END;
$$;


--
-- Name: rebuild_pending(); Type: FUNCTION; Schema: tidings; Owner: -
--

CREATE FUNCTION tidings.rebuild_pending() RETURNS bigint
    LANGUAGE plpgsql
    AS $$
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


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_keys; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.api_keys (
    key_hash text NOT NULL,
    instance_id text NOT NULL,
    key_id text NOT NULL,
    name text NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamp with time zone NOT NULL,
    created_by text NOT NULL,
    revoked_at timestamp with time zone,
    revoked_by text
);


--
-- Name: events; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.events (
    instance_id text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    sequence bigint NOT NULL,
    event_type text NOT NULL,
    payload jsonb NOT NULL,
    owner text DEFAULT ''::text NOT NULL,
    creator text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    "position" bigint NOT NULL,
    CONSTRAINT events_aggregate_not_empty CHECK (((aggregate_type <> ''::text) AND (aggregate_id <> ''::text))),
    CONSTRAINT events_sequence_check CHECK ((sequence >= 1)),
    CONSTRAINT events_type_not_empty CHECK ((event_type <> ''::text))
);


--
-- Name: TABLE events; Type: COMMENT; Schema: tidings; Owner: -
--

COMMENT ON TABLE tidings.events IS 'Append-only event log; write through tidings.append_events only.';


--
-- Name: COLUMN events."position"; Type: COMMENT; Schema: tidings; Owner: -
--

COMMENT ON COLUMN tidings.events."position" IS '(id of the writing transaction << 16) + index within it; position >> 16 is the transaction id';


--
-- Name: feed_counts; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.feed_counts (
    instance_id text NOT NULL,
    user_id text NOT NULL,
    total integer DEFAULT 0 NOT NULL,
    unread integer DEFAULT 0 NOT NULL,
    unseen integer DEFAULT 0 NOT NULL,
    pruned_through bigint DEFAULT 0 NOT NULL,
    CONSTRAINT feed_counts_total_check CHECK ((total >= 0)),
    CONSTRAINT feed_counts_unread_check CHECK ((unread >= 0)),
    CONSTRAINT feed_counts_unseen_check CHECK ((unseen >= 0))
);


--
-- Name: feed_from_log; Type: VIEW; Schema: tidings; Owner: -
--

CREATE VIEW tidings.feed_from_log AS
 WITH marks AS (
         SELECT m.instance_id,
            m.aggregate_id,
            m.event_type,
            m.sequence,
            m.created_at
           FROM tidings.events m
          WHERE ((m.aggregate_type = 'notification'::text) AND (m.event_type = ANY (ARRAY['notification.seen'::text, 'notification.read'::text, 'notification.unread'::text, 'notification.archived'::text, 'notification.unarchived'::text])))
        )
 SELECT instance_id,
    aggregate_id AS notification_id,
    COALESCE((payload #>> '{inapp,user_id}'::text[]), ''::text) AS user_id,
    "position",
    GREATEST(sequence, ( SELECT max(k.sequence) AS max
           FROM marks k
          WHERE ((k.instance_id = s.instance_id) AND (k.aggregate_id = s.aggregate_id)))) AS sequence,
    created_at AS sent_at,
    COALESCE((payload #>> '{inapp,message_type}'::text[]), ''::text) AS message_type,
    COALESCE((payload #>> '{inapp,lang}'::text[]), ''::text) AS lang,
    COALESCE((payload #>> '{inapp,title}'::text[]), ''::text) AS title,
    COALESCE((payload #>> '{inapp,body}'::text[]), ''::text) AS body,
    COALESCE((payload #>> '{inapp,action_url}'::text[]), ''::text) AS action_url,
    COALESCE((payload #> '{inapp,data}'::text[]), '{}'::jsonb) AS data,
    ( SELECT min(k.created_at) AS min
           FROM marks k
          WHERE ((k.instance_id = s.instance_id) AND (k.aggregate_id = s.aggregate_id) AND (k.sequence > s.sequence) AND (k.event_type = ANY (ARRAY['notification.seen'::text, 'notification.read'::text])))) AS seen_at,
    ( SELECT min(k.created_at) AS min
           FROM marks k
          WHERE ((k.instance_id = s.instance_id) AND (k.aggregate_id = s.aggregate_id) AND (k.event_type = 'notification.read'::text) AND (k.sequence > GREATEST(s.sequence, COALESCE(( SELECT max(u.sequence) AS max
                   FROM marks u
                  WHERE ((u.instance_id = s.instance_id) AND (u.aggregate_id = s.aggregate_id) AND (u.event_type = 'notification.unread'::text))), (0)::bigint))))) AS read_at,
    ( SELECT min(k.created_at) AS min
           FROM marks k
          WHERE ((k.instance_id = s.instance_id) AND (k.aggregate_id = s.aggregate_id) AND (k.event_type = 'notification.archived'::text) AND (k.sequence > GREATEST(s.sequence, COALESCE(( SELECT max(u.sequence) AS max
                   FROM marks u
                  WHERE ((u.instance_id = s.instance_id) AND (u.aggregate_id = s.aggregate_id) AND (u.event_type = 'notification.unarchived'::text))), (0)::bigint))))) AS archived_at
   FROM tidings.events s
  WHERE ((aggregate_type = 'notification'::text) AND (event_type = 'notification.sent'::text) AND (payload ? 'inapp'::text) AND (jsonb_typeof((payload -> 'inapp'::text)) = 'object'::text) AND (NOT (EXISTS ( SELECT 1
           FROM tidings.events f
          WHERE ((f.instance_id = s.instance_id) AND (f.aggregate_type = 'notification'::text) AND (f.aggregate_id = s.aggregate_id) AND (f.event_type = 'notification.sent'::text) AND (f.payload ? 'inapp'::text) AND (f.sequence < s.sequence))))));


--
-- Name: VIEW feed_from_log; Type: COMMENT; Schema: tidings; Owner: -
--

COMMENT ON VIEW tidings.feed_from_log IS 'The feed items rebuilt from the log, retention aside: what rebuild_feed() writes';


--
-- Name: feed_items; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.feed_items (
    instance_id text NOT NULL,
    notification_id text NOT NULL,
    user_id text NOT NULL,
    "position" bigint NOT NULL,
    sequence bigint NOT NULL,
    sent_at timestamp with time zone NOT NULL,
    message_type text NOT NULL,
    lang text NOT NULL,
    title text NOT NULL,
    body text NOT NULL,
    action_url text NOT NULL,
    data jsonb NOT NULL,
    seen_at timestamp with time zone,
    read_at timestamp with time zone,
    archived_at timestamp with time zone
);


--
-- Name: feed_presence; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.feed_presence (
    instance_id text NOT NULL,
    user_id text NOT NULL,
    process_id text NOT NULL,
    connections integer NOT NULL,
    transports jsonb NOT NULL,
    since timestamp with time zone NOT NULL,
    CONSTRAINT feed_presence_connections_check CHECK ((connections > 0))
);


--
-- Name: feed_processes; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.feed_processes (
    process_id text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    started_at timestamp with time zone NOT NULL,
    heartbeat_at timestamp with time zone NOT NULL,
    expires_at timestamp with time zone NOT NULL
);


--
-- Name: pending_from_log; Type: VIEW; Schema: tidings; Owner: -
--

CREATE VIEW tidings.pending_from_log AS
 SELECT last.instance_id,
    last.aggregate_id AS notification_id,
        CASE
            WHEN (last.event_type = 'notification.requested'::text) THEN 'request'::text
            ELSE 'retry'::text
        END AS kind,
    last.sequence,
        CASE
            WHEN (last.event_type = 'notification.requested'::text) THEN 0
            ELSE tidings.pending_attempt(last.payload)
        END AS attempts,
    first.created_at AS requested_at,
        CASE
            WHEN (last.event_type = 'notification.requested'::text) THEN last.created_at
            ELSE tidings.pending_due_at(last.payload, last.created_at)
        END AS due_at,
    COALESCE((last.payload -> 'request'::text), (first.payload -> 'request'::text)) AS request,
    (last.payload -> 'notify_user'::text) AS notify_user,
    (last.payload ->> 'backoff'::text) AS backoff,
    (last.payload ->> 'error'::text) AS last_error
   FROM (( SELECT DISTINCT ON (e.instance_id, e.aggregate_id) e.instance_id,
            e.aggregate_type,
            e.aggregate_id,
            e.sequence,
            e.event_type,
            e.payload,
            e.owner,
            e.creator,
            e.created_at,
            e."position"
           FROM tidings.events e
          WHERE (e.aggregate_type = 'notification'::text)
          ORDER BY e.instance_id, e.aggregate_id, e.sequence DESC) last
     JOIN tidings.events first ON (((first.instance_id = last.instance_id) AND (first.aggregate_type = 'notification'::text) AND (first.aggregate_id = last.aggregate_id) AND (first.sequence = 1) AND (first.event_type = 'notification.requested'::text))))
  WHERE (last.event_type = ANY (ARRAY['notification.requested'::text, 'notification.retry.requested'::text]));


--
-- Name: VIEW pending_from_log; Type: COMMENT; Schema: tidings; Owner: -
--

COMMENT ON VIEW tidings.pending_from_log IS 'The pending queue rebuilt from the log (leases free): what rebuild_pending() writes';


--
-- Name: pending_notifications; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.pending_notifications (
    instance_id text NOT NULL,
    notification_id text NOT NULL,
    kind text NOT NULL,
    sequence bigint NOT NULL,
    attempts integer NOT NULL,
    requested_at timestamp with time zone NOT NULL,
    due_at timestamp with time zone NOT NULL,
    leased_until timestamp with time zone,
    lease_owner text,
    claims integer DEFAULT 0 NOT NULL,
    request jsonb,
    notify_user jsonb,
    backoff text,
    last_error text,
    CONSTRAINT pending_kind CHECK ((kind = ANY (ARRAY['request'::text, 'retry'::text])))
)
WITH (autovacuum_vacuum_scale_factor='0', autovacuum_vacuum_threshold='10000', autovacuum_analyze_scale_factor='0', autovacuum_analyze_threshold='10000');


--
-- Name: projection_checkpoints; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.projection_checkpoints (
    name text NOT NULL,
    "position" bigint DEFAULT 0 NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: projection_failures; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.projection_failures (
    name text NOT NULL,
    "position" bigint NOT NULL,
    instance_id text NOT NULL,
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    sequence bigint NOT NULL,
    event_type text NOT NULL,
    error text NOT NULL,
    failed_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: schema_migrations; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.schema_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamp with time zone DEFAULT now() NOT NULL
);


--
-- Name: users; Type: TABLE; Schema: tidings; Owner: -
--

CREATE TABLE tidings.users (
    instance_id text NOT NULL,
    user_id text NOT NULL,
    resource_owner text DEFAULT ''::text NOT NULL,
    username text DEFAULT ''::text NOT NULL,
    first_name text DEFAULT ''::text NOT NULL,
    last_name text DEFAULT ''::text NOT NULL,
    display_name text DEFAULT ''::text NOT NULL,
    preferred_language text DEFAULT ''::text NOT NULL,
    last_email text,
    verified_email text,
    last_phone text,
    verified_phone text,
    state text DEFAULT 'active'::text NOT NULL,
    sequence bigint NOT NULL,
    change_date timestamp with time zone NOT NULL,
    CONSTRAINT users_state CHECK ((state = ANY (ARRAY['active'::text, 'removed'::text])))
);


--
-- Name: api_keys api_keys_id; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.api_keys
    ADD CONSTRAINT api_keys_id UNIQUE (instance_id, key_id);


--
-- Name: api_keys api_keys_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (key_hash);


--
-- Name: events events_aggregate_sequence; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.events
    ADD CONSTRAINT events_aggregate_sequence PRIMARY KEY (aggregate_id, aggregate_type, instance_id, sequence);


--
-- Name: events events_position; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.events
    ADD CONSTRAINT events_position UNIQUE ("position");


--
-- Name: feed_counts feed_counts_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.feed_counts
    ADD CONSTRAINT feed_counts_pkey PRIMARY KEY (instance_id, user_id);


--
-- Name: feed_items feed_items_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.feed_items
    ADD CONSTRAINT feed_items_pkey PRIMARY KEY (instance_id, notification_id);


--
-- Name: feed_presence feed_presence_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.feed_presence
    ADD CONSTRAINT feed_presence_pkey PRIMARY KEY (instance_id, user_id, process_id);


--
-- Name: feed_processes feed_processes_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.feed_processes
    ADD CONSTRAINT feed_processes_pkey PRIMARY KEY (process_id);


--
-- Name: pending_notifications pending_notifications_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.pending_notifications
    ADD CONSTRAINT pending_notifications_pkey PRIMARY KEY (instance_id, notification_id);


--
-- Name: projection_checkpoints projection_checkpoints_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.projection_checkpoints
    ADD CONSTRAINT projection_checkpoints_pkey PRIMARY KEY (name);


--
-- Name: projection_failures projection_failures_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.projection_failures
    ADD CONSTRAINT projection_failures_pkey PRIMARY KEY (name, "position");


--
-- Name: schema_migrations schema_migrations_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (instance_id, user_id);


--
-- Name: events_created_at_range; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_created_at_range ON tidings.events USING brin (created_at);


--
-- Name: events_feed; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_feed ON tidings.events USING btree ("position") WHERE ((aggregate_type = 'notification'::text) AND ((event_type = ANY (ARRAY['notification.seen'::text, 'notification.read'::text, 'notification.unread'::text, 'notification.archived'::text, 'notification.unarchived'::text])) OR ((event_type = 'notification.sent'::text) AND (payload ? 'inapp'::text))));


--
-- Name: events_feed_user; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_feed_user ON tidings.events USING btree (instance_id, COALESCE((payload #>> '{inapp,user_id}'::text[]), (payload ->> 'user_id'::text)), "position") WHERE ((aggregate_type = 'notification'::text) AND ((event_type = ANY (ARRAY['notification.seen'::text, 'notification.read'::text, 'notification.unread'::text, 'notification.archived'::text, 'notification.unarchived'::text])) OR ((event_type = 'notification.sent'::text) AND (payload ? 'inapp'::text))));


--
-- Name: events_instance_created_at; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_instance_created_at ON tidings.events USING btree (instance_id, created_at);


--
-- Name: events_instance_type_position; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_instance_type_position ON tidings.events USING btree (instance_id, event_type, "position");


--
-- Name: events_notification_user; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_notification_user ON tidings.events USING btree (((payload #>> '{request,user_id}'::text[])), instance_id) WHERE (event_type = 'notification.requested'::text);


--
-- Name: events_requested_at; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX events_requested_at ON tidings.events USING btree (created_at) WHERE ((aggregate_type = 'notification'::text) AND (event_type = 'notification.requested'::text));


--
-- Name: feed_items_sent_at; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX feed_items_sent_at ON tidings.feed_items USING btree (sent_at);


--
-- Name: feed_items_user; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX feed_items_user ON tidings.feed_items USING btree (instance_id, user_id, "position" DESC);


--
-- Name: feed_presence_process; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX feed_presence_process ON tidings.feed_presence USING btree (process_id);


--
-- Name: feed_processes_expires_at; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX feed_processes_expires_at ON tidings.feed_processes USING btree (expires_at);


--
-- Name: pending_notifications_claim; Type: INDEX; Schema: tidings; Owner: -
--

CREATE INDEX pending_notifications_claim ON tidings.pending_notifications USING btree (kind, instance_id, due_at);


--
-- Name: events api_keys_apply; Type: TRIGGER; Schema: tidings; Owner: -
--

CREATE TRIGGER api_keys_apply AFTER INSERT ON tidings.events FOR EACH ROW WHEN ((new.aggregate_type = 'apikey'::text)) EXECUTE FUNCTION tidings.api_keys_apply();


--
-- Name: events events_feed; Type: TRIGGER; Schema: tidings; Owner: -
--

CREATE TRIGGER events_feed AFTER INSERT ON tidings.events REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tidings.feed_apply();


--
-- Name: events events_pending_notifications; Type: TRIGGER; Schema: tidings; Owner: -
--

CREATE TRIGGER events_pending_notifications AFTER INSERT ON tidings.events REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION tidings.pending_apply_statement();


--
-- Name: feed_presence feed_presence_process_id_fkey; Type: FK CONSTRAINT; Schema: tidings; Owner: -
--

ALTER TABLE ONLY tidings.feed_presence
    ADD CONSTRAINT feed_presence_process_id_fkey FOREIGN KEY (process_id) REFERENCES tidings.feed_processes(process_id) ON DELETE CASCADE;


--
-- PostgreSQL database dump complete
--

-- The migrations this schema stands for: `tidings migrate` finds nothing to do.
INSERT INTO tidings.schema_migrations (version, name, checksum) VALUES
    (1, 'events', 'a0609e5f3398d33e775a1981da9d24f1f4f19f1e5189455bc6927b0f9e49607a'),
    (2, 'event_queries', 'a7ecc8a1d9924dfff6f9424af1784b49b88b270d0a4ba57cfea1c8416ce0bf5c'),
    (3, 'projections', '0c9631936ffacf72e569a72286fc6bb7ac28b5aacff75160fd5a3a17a8602bf3'),
    (4, 'pending_notifications', 'd5cd3dce80f26856cc80c1f822d0d80883fdd078db265f5e9ef63e3ed3e7b856'),
    (5, 'pending_autovacuum', '034be3d633afac37ae139a121f4d6ceb2853873fd77becccd510f5c099975c43'),
    (6, 'audit_lookups', 'f123ead9a1e773054cbb48109c9231f136c7f161a64198e1fe12fcabaef73e7b'),
    (7, 'pending_from_log', '8d2f6f48c1e3ce841dcded62ac09e97657a3d9329ed1461ebe86126896155146'),
    (8, 'api', '0b30bd9b8de0825172113ed87efe30141ddb4276f204563f7fc928cdc764a015'),
    (9, 'feeds', 'f34c2e5891a47f2e3c601fda50aa98f4ad2b21f7eba882468ffaa5f793e3ea98'),
    (10, 'feed_presence', '4754e17dd0d0a7ffe9fb5377441355b8e6963645c3094c6fa47263a636a56dc4'),
    (11, 'append_at_set_speed', '059ed92912529c8953b413a30dde63b2b4e3b123497e4af5d4a62a45b9178c4e'),
    (12, 'cheaper_appends', 'b456b699b0630145cc235902ca8fb080ac6258600fa1c063c012010ad5b89f8d'),
    (13, 'aggregate_key_first', '262626696c085c57c54178b1293ccdf0972b0652df4f62a135e77a14f06eb566');
