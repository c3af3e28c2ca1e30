-- The pending queue (tidings.pending_notifications, kept by a trigger on the log).

-- name: claim_due
-- Claims up to a bulk of due notifications of one kind in one statement.
-- Fair between instances: it walks the instances that have pending work (a
-- loose index scan, so the cost grows with the number of instances, not of
-- notifications), takes each one's earliest due rows, and hands them out
-- round-robin, so one instance's backlog delays another's message by at most
-- one bulk. SKIP LOCKED lets concurrent workers claim disjoint rows; the lease
-- makes a row invisible to other claims until it runs out (a crashed worker's
-- claims come back then). Each row comes with its user as the users read model
-- has them (the u_* columns, all NULL for a user it does not know): the workers
-- need them for every claim, and this saves them a round trip per bulk.
--
-- The bulk is written into the statement (an integer from the settings, put in
-- by queue.py's claim_statement) rather than bound: the server soon keeps one
-- generic plan for a prepared statement, and with an unknown LIMIT that plan
-- expected hundreds of chosen rows and read the whole queue into a hash to
-- update ten of them (a claim grew with the queue).
--
-- The round-robin reads and locks as few rows as it can: with n instances it
-- first takes each one's ceil(bulk / n) earliest free rows (`first_turns`).
-- Those hold every row the full round-robin would hand out when they are at
-- least a bulk, or when no instance had more free rows than that; only
-- otherwise (some instance has fewer free rows, another may have more) does it
-- take up to a bulk of each instance's rows (`all_turns`), as the round-robin
-- needs. A row another claim holds is passed over (SKIP LOCKED), as is one it
-- leased since (the lease test is evaluated again on a locked row).
WITH RECURSIVE instances AS (
    (SELECT p.instance_id
     FROM tidings.pending_notifications p
     WHERE p.kind = %(kind)s
     ORDER BY p.instance_id
     LIMIT 1)
    UNION ALL
    SELECT (SELECT p.instance_id
            FROM tidings.pending_notifications p
            WHERE p.kind = %(kind)s AND p.instance_id > i.instance_id
            ORDER BY p.instance_id
            LIMIT 1)
    FROM instances i
    WHERE i.instance_id IS NOT NULL
),
active AS (
    SELECT i.instance_id
    FROM instances i
    WHERE i.instance_id IS NOT NULL
      AND (%(active_since)s::timestamptz IS NULL OR EXISTS (
            SELECT 1 FROM tidings.events e
            WHERE e.instance_id = i.instance_id AND e.created_at >= %(active_since)s))
),
fair AS (
    SELECT ({bulk}::bigint + count(*) - 1) / greatest(count(*), 1) AS share FROM active
),
first_turns AS (
    SELECT a.instance_id, c.notification_id, c.due_at, c.user_id
    FROM active a
    CROSS JOIN fair f
    CROSS JOIN LATERAL (
        SELECT p.notification_id, p.due_at, p.request ->> 'user_id' AS user_id
        FROM tidings.pending_notifications p
        WHERE p.kind = %(kind)s
          AND p.instance_id = a.instance_id
          -- A request is due at once (its due_at, the database's time of the
          -- request, only orders them); a retry's due time comes from the
          -- workers' own clock, as do the leases, so the two never mix clocks.
          AND (p.kind = 'request' OR p.due_at <= %(now)s)
          AND (p.leased_until IS NULL OR p.leased_until <= %(now)s)
        ORDER BY p.due_at
        LIMIT f.share
        FOR UPDATE SKIP LOCKED
    ) c
),
all_turns AS (
    SELECT a.instance_id, c.notification_id, c.due_at, c.user_id
    FROM active a
    CROSS JOIN LATERAL (
        SELECT p.notification_id, p.due_at, p.request ->> 'user_id' AS user_id
        FROM tidings.pending_notifications p
        WHERE p.kind = %(kind)s
          AND p.instance_id = a.instance_id
          AND (p.kind = 'request' OR p.due_at <= %(now)s)
          AND (p.leased_until IS NULL OR p.leased_until <= %(now)s)
        ORDER BY p.due_at
        LIMIT {bulk}
        FOR UPDATE SKIP LOCKED
    ) c
    -- Evaluated once, before any of these rows is read.
    WHERE (SELECT count(*) FROM first_turns) < {bulk}
      AND EXISTS (SELECT 1 FROM first_turns t GROUP BY t.instance_id
                  HAVING count(*) >= (SELECT f.share FROM fair f))
),
candidates AS (
    SELECT * FROM first_turns WHERE NOT EXISTS (SELECT 1 FROM all_turns)
    UNION ALL
    SELECT * FROM all_turns
),
chosen AS (
    SELECT ranked.instance_id, ranked.notification_id, ranked.user_id
    FROM (
        SELECT c.instance_id, c.notification_id, c.due_at, c.user_id,
               row_number() OVER (PARTITION BY c.instance_id ORDER BY c.due_at) AS turn
        FROM candidates c
    ) ranked
    ORDER BY ranked.turn, ranked.due_at
    LIMIT {bulk}
)
UPDATE tidings.pending_notifications p
SET leased_until = %(lease_until)s, lease_owner = %(owner)s, claims = p.claims + 1
FROM chosen
-- The same columns as the projections' users_get_many (a NotifyUser). The workers
-- read the returned columns by position (queue.py's _claimed): keep their order.
-- The request and the user snapshot come as text, for queue.py to parse.
LEFT JOIN tidings.users u
       ON u.instance_id = chosen.instance_id AND u.user_id = chosen.user_id
WHERE p.instance_id = chosen.instance_id AND p.notification_id = chosen.notification_id
RETURNING p.instance_id, p.notification_id, p.kind, p.sequence, p.attempts, p.requested_at,
          p.due_at, p.claims, p.request::text, p.notify_user::text, p.backoff, p.last_error,
          p.leased_until,
          u.user_id AS u_user_id, u.resource_owner AS u_resource_owner,
          u.username AS u_username, u.first_name AS u_first_name, u.last_name AS u_last_name,
          u.display_name AS u_display_name, u.preferred_language AS u_preferred_language,
          u.last_email AS u_last_email, u.verified_email AS u_verified_email,
          u.last_phone AS u_last_phone, u.verified_phone AS u_verified_phone,
          u.state AS u_state, u.sequence AS u_sequence, u.change_date AS u_change_date;

-- name: release_leases
-- Notifications their worker put off without an attempt (the lifecycle said
-- WAIT): claimable again from their time instead of when the lease runs out.
-- The claim is given back too, so the next one does not count as a lease that
-- ran out. Fenced by the sequence seen at claim time.
UPDATE tidings.pending_notifications p
SET leased_until = r.until, claims = greatest(p.claims - 1, 0)
FROM unnest(%(instance_ids)s::text[], %(notification_ids)s::text[], %(sequences)s::bigint[],
            %(untils)s::timestamptz[]) AS r(instance_id, notification_id, sequence, until)
WHERE p.instance_id = r.instance_id
  AND p.notification_id = r.notification_id
  AND p.sequence = r.sequence;

-- name: has_pending
SELECT EXISTS (SELECT 1 FROM tidings.pending_notifications WHERE kind = ANY(%(kinds)s));

-- name: next_due
-- A free request is due at once: 'epoch' stands for "long ago" (psycopg
-- cannot load '-infinity').
SELECT min(CASE WHEN leased_until IS NOT NULL THEN leased_until
                WHEN kind = 'request' THEN 'epoch'::timestamptz
                ELSE due_at END)
FROM tidings.pending_notifications
WHERE kind = ANY(%(kinds)s);

-- name: queue_counts
SELECT kind,
       count(*) AS pending,
       count(*) FILTER (WHERE (kind = 'request' OR due_at <= %(now)s)
                        AND (leased_until IS NULL OR leased_until <= %(now)s)) AS due,
       count(*) FILTER (WHERE leased_until > %(now)s) AS leased
FROM tidings.pending_notifications
GROUP BY kind;

-- name: rebuild_pending
SELECT tidings.rebuild_pending();

-- name: pending_all
SELECT instance_id, notification_id, kind, sequence, attempts, requested_at, due_at,
       request, notify_user, backoff, last_error
FROM tidings.pending_notifications
ORDER BY instance_id, notification_id;
