-- The HTTP API's keys, and the in-database door for platforms that share the database.
--
-- tidings.api_keys is an inline projection of the apikey aggregate: a trigger
-- on tidings.events writes it in the same transaction as apikey.created and
-- apikey.revoked, whoever appends them; tidings.rebuild_api_keys() rebuilds it
-- from the log. Only the key's SHA-256 is ever stored, in the log and here.
CREATE TABLE tidings.api_keys (
    key_hash    text        PRIMARY KEY,   -- 'sha256:<hex>' of the whole key
    instance_id text        NOT NULL,
    key_id      text        NOT NULL,
    name        text        NOT NULL,
    scopes      text[]      NOT NULL,
    created_at  timestamptz NOT NULL,
    created_by  text        NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text,
    CONSTRAINT api_keys_id UNIQUE (instance_id, key_id)
);

CREATE FUNCTION tidings.api_keys_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER api_keys_apply
AFTER INSERT ON tidings.events
FOR EACH ROW WHEN (NEW.aggregate_type = 'apikey')
EXECUTE FUNCTION tidings.api_keys_apply();

CREATE FUNCTION tidings.rebuild_api_keys() RETURNS bigint LANGUAGE plpgsql AS $$
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

-- The in-database door (a transactional outbox): a platform that shares the
-- database appends user and session events in its own transaction, so its
-- state change and the events commit together or not at all:
--
--   BEGIN;
--   UPDATE accounts SET email = 'ada@example.com' WHERE id = 'user-ada';
--   SELECT * FROM tidings.append_events('[{"instance_id": "acme",
--       "aggregate_type": "user", "aggregate_id": "user-ada", "expected_sequence": 3,
--       "event_type": "user.human.email.changed", "payload": {"email": "ada@example.com"}}]');
--   COMMIT;
--
-- Each element takes the `tidings events append` envelope: instance_id,
-- aggregate_type, aggregate_id, event_type, payload, and optionally
-- expected_sequence, owner and creator. Only user.* and session.* events; a
-- code must arrive encrypted (the database has no key to encrypt a plain one).
-- Errors: 22023 (a malformed element, its index in the message), TD001 (an
-- expected sequence does not hold), TD003 (the transaction wrote before a
-- concurrent event on the same aggregate committed: retry the transaction).
-- This signature is the stable interface; the array form underneath may change.
CREATE FUNCTION tidings.append_events(p_events jsonb)
RETURNS TABLE (out_position bigint, out_sequence bigint, out_created_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    n    integer;
    e    jsonb;
    k    text;
    i    integer := 0;
BEGIN
    IF jsonb_typeof(p_events) IS DISTINCT FROM 'array' OR jsonb_array_length(p_events) = 0 THEN
        RAISE EXCEPTION USING ERRCODE = '22023',
            MESSAGE = 'tidings.append_events expects a non-empty JSON array of events';
    END IF;
    n := jsonb_array_length(p_events);
    FOR e IN SELECT value FROM jsonb_array_elements(p_events) LOOP
        IF jsonb_typeof(e) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('event %s: expected a JSON object', i);
        END IF;
        FOREACH k IN ARRAY ARRAY['instance_id', 'aggregate_type', 'aggregate_id', 'event_type'] LOOP
            IF jsonb_typeof(e->k) IS DISTINCT FROM 'string' OR e->>k = '' THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('event %s: %s must be a non-empty string', i, k);
            END IF;
        END LOOP;
        FOR k IN SELECT jsonb_object_keys(e) LOOP
            IF k NOT IN ('instance_id', 'aggregate_type', 'aggregate_id', 'event_type',
                         'payload', 'expected_sequence', 'owner', 'creator') THEN
                RAISE EXCEPTION USING ERRCODE = '22023',
                    MESSAGE = format('event %s: unknown field %s', i, k);
            END IF;
        END LOOP;
        IF NOT (e->>'event_type' LIKE 'user.%' OR e->>'event_type' LIKE 'session.%')
           OR e->>'aggregate_type' <> split_part(e->>'event_type', '.', 1) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('event %s: %s on a %s aggregate: only user.* events on user '
                                 'and session.* events on session aggregates may be appended',
                                 i, e->>'event_type', e->>'aggregate_type');
        END IF;
        IF jsonb_typeof(coalesce(e->'payload', '{}')) <> 'object' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('event %s: payload must be a JSON object', i);
        END IF;
        IF jsonb_typeof(e->'payload'->'code') = 'object' AND e->'payload'->'code' ? 'plain' THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('event %s: payload.code must be encrypted here; send plain '
                                 'codes through POST /v1/events', i);
        END IF;
        IF e ? 'expected_sequence' AND jsonb_typeof(e->'expected_sequence') <> 'null'
           AND (jsonb_typeof(e->'expected_sequence') <> 'number'
                OR (e->>'expected_sequence')::numeric < 0) THEN
            RAISE EXCEPTION USING ERRCODE = '22023',
                MESSAGE = format('event %s: expected_sequence must be a number >= 0', i);
        END IF;
        i := i + 1;
    END LOOP;

    RETURN QUERY
    SELECT a.out_position, a.out_sequence, a.out_created_at
    FROM tidings.append_events(
        ARRAY(SELECT x->>'instance_id' FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT x->>'aggregate_type' FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT x->>'aggregate_id' FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT (x->>'expected_sequence')::bigint FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT x->>'event_type' FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT coalesce(x->'payload', '{}') FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT coalesce(x->>'owner', '') FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        ARRAY(SELECT coalesce(x->>'creator', current_user) FROM jsonb_array_elements(p_events) WITH ORDINALITY AS t(x, o) ORDER BY o),
        'tidings_events') AS a;
END;
$$;

COMMENT ON FUNCTION tidings.append_events(jsonb) IS
    'Append user.*/session.* events in the caller''s transaction (a transactional outbox); see docs/api.md';
