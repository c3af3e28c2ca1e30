-- The event log: one table, the single source of truth.
--
-- position is the global order. It is derived from the writing transaction:
-- position = (transaction id << 16) + n, n counting that transaction's events.
-- Ordering by position is therefore ordering by transaction id, and every event
-- below (snapshot xmin << 16) was written by a transaction that has finished.
-- That is what lets the ordered reader never skip an event that commits late:
-- it reads only below that horizon, and no event can ever appear there again.
CREATE TABLE tidings.events (
    instance_id    text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL CHECK (sequence >= 1),
    event_type     text        NOT NULL,
    payload        jsonb       NOT NULL,
    owner          text        NOT NULL DEFAULT '',
    creator        text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    position       bigint      NOT NULL,
    CONSTRAINT events_aggregate_sequence
        PRIMARY KEY (instance_id, aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_position UNIQUE (position),
    CONSTRAINT events_type_not_empty CHECK (event_type <> ''),
    CONSTRAINT events_aggregate_not_empty CHECK (aggregate_type <> '' AND aggregate_id <> '')
);

COMMENT ON TABLE tidings.events IS 'Append-only event log; write through tidings.append_events only.';
COMMENT ON COLUMN tidings.events.position IS
    '(id of the writing transaction << 16) + index within it; position >> 16 is the transaction id';

-- Appends events atomically. Each element of the arrays is one event; an
-- expected sequence is the aggregate's last sequence as the writer saw it (0
-- for a new aggregate), NULL to append after whatever is last.
--
-- Why the aggregate lock comes first: the position is taken from the
-- transaction id, which PostgreSQL assigns at the first write. Taking the
-- per-aggregate advisory locks before that write means a writer that waited
-- for another one on the same aggregate gets a larger transaction id, so an
-- aggregate's positions grow with its sequences. A caller whose transaction
-- wrote something before appending may still break that order; the check
-- below refuses it (TD003) instead of writing an event out of order.
CREATE FUNCTION tidings.append_events(
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
    lock_key   integer;
    tx_base    bigint;
    first_pos  bigint;
    sequences  bigint[];  -- the sequence each event gets
    heads      bigint[];  -- the position of its aggregate's last stored event
    wake       jsonb;
BEGIN
    IF n = 0 THEN
        RETURN;
    END IF;
    FOR lock_key IN
        SELECT DISTINCT hashtext(i || chr(31) || t || chr(31) || a)
        FROM unnest(p_instance_ids, p_aggregate_types, p_aggregate_ids) AS u(i, t, a)
        ORDER BY 1
    LOOP
        PERFORM pg_advisory_xact_lock(7101, lock_key);
    END LOOP;

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

    FOR i IN 1..n LOOP
        IF p_expected[i] IS NOT NULL AND p_expected[i] <> sequences[i] - 1 THEN
            RAISE EXCEPTION USING
                ERRCODE = 'TD001',
                MESSAGE = format(
                    'concurrent append to %s/%s/%s: expected sequence %s, the aggregate is at %s',
                    p_instance_ids[i], p_aggregate_types[i], p_aggregate_ids[i],
                    p_expected[i], sequences[i] - 1),
                DETAIL = jsonb_build_object(
                    'index', i - 1,
                    'instance_id', p_instance_ids[i],
                    'aggregate_type', p_aggregate_types[i],
                    'aggregate_id', p_aggregate_ids[i],
                    'expected_sequence', p_expected[i],
                    'actual_sequence', sequences[i] - 1)::text;
        END IF;
        IF heads[i] >= first_pos THEN
            RAISE EXCEPTION USING
                ERRCODE = 'TD003',
                MESSAGE = format(
                    'append to %s/%s/%s would land before its last event: the transaction '
                    'wrote before that event committed; retry in a new transaction',
                    p_instance_ids[i], p_aggregate_types[i], p_aggregate_ids[i]),
                DETAIL = jsonb_build_object(
                    'index', i - 1,
                    'instance_id', p_instance_ids[i],
                    'aggregate_type', p_aggregate_types[i],
                    'aggregate_id', p_aggregate_ids[i],
                    'expected_sequence', p_expected[i],
                    'actual_sequence', sequences[i] - 1)::text;
        END IF;
    END LOOP;

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
