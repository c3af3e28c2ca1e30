-- Named queries of the in-app feed (tidings.feeds). The read model is kept by
-- the trigger of migration 0009; these read it, and read the feed's events
-- from the log for the streams.

-- name: feed_item
SELECT notification_id, position, sequence, sent_at, message_type, lang, title, body,
       action_url, data, seen_at, read_at, archived_at
FROM tidings.feed_items
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s
  AND notification_id = %(notification_id)s;

-- name: feed_page
-- Newest first, below the cursor (the position of the last item of the
-- previous page). all: not archived; unread: not archived and not read;
-- archived: archived only.
SELECT i.notification_id, i.position, i.sequence, i.sent_at, i.message_type, i.lang, i.title,
       i.body, i.action_url, i.data, i.seen_at, i.read_at, i.archived_at
FROM tidings.feed_items i
WHERE i.instance_id = %(instance_id)s AND i.user_id = %(user_id)s
  AND i.position < %(before)s
  AND CASE %(filter)s
        WHEN 'archived' THEN i.archived_at IS NOT NULL
        WHEN 'unread' THEN i.archived_at IS NULL AND i.read_at IS NULL
        ELSE i.archived_at IS NULL
      END
ORDER BY i.position DESC
LIMIT %(limit)s;

-- name: stream_horizon
-- Where a stream opened after a read of the feed resumes: every event below
-- the horizon was written by a finished transaction, so a read of the feed
-- that starts after this one holds them all. Events at or above it may be in
-- that read too; the stream then repeats them and a client applies them again
-- (an item by its id, a mark as a state), which changes nothing.
SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) - 1;

-- name: feed_counts
SELECT total, unread, unseen
FROM tidings.feed_counts
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: unread_items
-- What read-all marks: every unread item of the feed (not archived).
SELECT notification_id, sequence
FROM tidings.feed_items
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s
  AND read_at IS NULL AND archived_at IS NULL
ORDER BY position;

-- name: prune_lock_users
-- Retention, first step: lock the counts of the users whose oldest items go
-- (at most %(limit)s items), in one order. The feed trigger locks a user's
-- counts before the item too, so a mark and a prune never deadlock.
SELECT c.instance_id, c.user_id
FROM tidings.feed_counts c
WHERE (c.instance_id, c.user_id) IN (
    SELECT instance_id, user_id FROM tidings.feed_items
    WHERE sent_at < %(cutoff)s
    ORDER BY sent_at
    LIMIT %(limit)s)
ORDER BY c.instance_id, c.user_id
FOR UPDATE;

-- name: prune_feed
-- Retention, second step (same transaction): drop those users' items sent
-- before the cutoff and take them out of the counts. The trigger finds no
-- item for a later mark of a dropped one and leaves the counts be.
WITH gone AS (
    DELETE FROM tidings.feed_items i
    WHERE i.sent_at < %(cutoff)s
      AND (i.instance_id, i.user_id) IN (
          SELECT u.instance_id, u.user_id
          FROM unnest(%(instance_ids)s::text[], %(user_ids)s::text[]) AS u(instance_id, user_id))
    RETURNING i.instance_id, i.user_id, i.position, i.seen_at, i.read_at, i.archived_at
), per_user AS (
    SELECT instance_id, user_id, count(*) AS items, max(position) AS newest,
           count(*) FILTER (WHERE archived_at IS NULL) AS total,
           count(*) FILTER (WHERE archived_at IS NULL AND read_at IS NULL) AS unread,
           count(*) FILTER (WHERE archived_at IS NULL AND seen_at IS NULL) AS unseen
    FROM gone
    GROUP BY instance_id, user_id
), counted AS (
    UPDATE tidings.feed_counts c SET
        total = c.total - p.total,
        unread = c.unread - p.unread,
        unseen = c.unseen - p.unseen,
        pruned_through = greatest(c.pruned_through, p.newest)
    FROM per_user p
    WHERE c.instance_id = p.instance_id AND c.user_id = p.user_id
    RETURNING p.items
)
SELECT coalesce(sum(items), 0)::bigint FROM counted;

-- name: feed_events_after
-- The hub's one query per wake-up: the feed events of every user after the
-- process's cursor, below the horizon (so an event that commits late is never
-- passed over: see read_ordered in the event store), each with its user's
-- counts as they are now. The predicate and the user expression are those of
-- the events_feed indexes (migration 0009), word for word.
WITH horizon AS (
    SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) AS position
)
SELECT e.instance_id, e.user_id, e.aggregate_id, e.event_type, e.payload, e.created_at,
       e.position, c.total, c.unread, c.unseen, h.position AS horizon
FROM horizon h
LEFT JOIN LATERAL (
    SELECT x.instance_id, coalesce(x.payload #>> '{inapp,user_id}', x.payload ->> 'user_id')
               AS user_id,
           x.aggregate_id, x.event_type, x.payload, x.created_at, x.position
    FROM tidings.events x
    WHERE x.position > %(after)s
      AND x.position < h.position
      AND x.aggregate_type = 'notification'
      AND (x.event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                            'notification.archived', 'notification.unarchived')
           OR (x.event_type = 'notification.sent' AND x.payload ? 'inapp'))
    ORDER BY x.position
    LIMIT %(limit)s
) e ON true
LEFT JOIN tidings.feed_counts c ON c.instance_id = e.instance_id AND c.user_id = e.user_id
ORDER BY e.position;

-- name: users_feed_events_after
-- The backfills of many streams in one query: for each (instance, user,
-- cursor) asked, that user's feed events after the cursor, below the horizon,
-- with the user's counts as they are now; and whether the cursor can be
-- resumed from: the newest position retention dropped for the user, and the
-- log's last position (a cursor past it is not this log's; one below the
-- horizon is, even on a quiet log where the horizon, and so a feed read's
-- stream_after, is past the last event). Rows come grouped by the ask's
-- number `n`, in position order; an ask with no events has one row with NULL
-- event columns.
WITH horizon AS (
    SELECT (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) AS position,
           greatest(coalesce((SELECT max(position) FROM tidings.events), 0),
                    (pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16) - 1)
               AS last_position
), wanted AS (
    SELECT * FROM unnest(%(instance_ids)s::text[], %(user_ids)s::text[], %(afters)s::bigint[])
        WITH ORDINALITY AS w(instance_id, user_id, after, n)
)
SELECT w.n, e.aggregate_id, e.event_type, e.payload, e.created_at, e.position,
       c.total, c.unread, c.unseen, coalesce(c.pruned_through, 0), h.last_position
FROM horizon h
CROSS JOIN wanted w
LEFT JOIN LATERAL (
    SELECT x.aggregate_id, x.event_type, x.payload, x.created_at, x.position
    FROM tidings.events x
    WHERE x.instance_id = w.instance_id
      AND coalesce(x.payload #>> '{inapp,user_id}', x.payload ->> 'user_id') = w.user_id
      AND x.position > w.after
      AND x.position < h.position
      AND x.aggregate_type = 'notification'
      AND (x.event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                            'notification.archived', 'notification.unarchived')
           OR (x.event_type = 'notification.sent' AND x.payload ? 'inapp'))
    ORDER BY x.position
    LIMIT %(limit)s
) e ON true
LEFT JOIN tidings.feed_counts c ON c.instance_id = w.instance_id AND c.user_id = w.user_id
ORDER BY w.n, e.position;

-- name: rebuild_feed
SELECT tidings.rebuild_feed(%(since)s);

-- name: presence_join
-- A serve process's heartbeat (and its first appearance). `inserted` is true
-- when its row was not there: it is new, or it was expired and cleaned while it
-- could not beat (an outage), and must write its presence again in full.
INSERT INTO tidings.feed_processes AS p
    (process_id, host, pid, started_at, heartbeat_at, expires_at)
VALUES (%(process_id)s, %(host)s, %(pid)s, %(started_at)s, now(),
        now() + make_interval(secs => %(expiry)s))
ON CONFLICT (process_id) DO UPDATE
    SET heartbeat_at = now(), expires_at = now() + make_interval(secs => %(expiry)s)
RETURNING (xmax = 0) AS inserted;

-- name: presence_set
-- The users of this process whose connections changed and still have some.
INSERT INTO tidings.feed_presence AS f
    (instance_id, user_id, process_id, connections, transports, since)
SELECT u.instance_id, u.user_id, %(process_id)s, u.connections, u.transports, u.since
FROM unnest(%(instance_ids)s::text[], %(user_ids)s::text[], %(connections)s::integer[],
            %(transports)s::jsonb[], %(since)s::timestamptz[])
     AS u(instance_id, user_id, connections, transports, since)
ON CONFLICT (instance_id, user_id, process_id) DO UPDATE
    SET connections = excluded.connections, transports = excluded.transports,
        since = excluded.since;

-- name: presence_drop
-- The users of this process whose last connection here closed.
DELETE FROM tidings.feed_presence f
USING unnest(%(instance_ids)s::text[], %(user_ids)s::text[]) AS u(instance_id, user_id)
WHERE f.process_id = %(process_id)s
  AND f.instance_id = u.instance_id AND f.user_id = u.user_id;

-- name: presence_clear
-- Everything this process said (before it writes it again in full).
DELETE FROM tidings.feed_presence WHERE process_id = %(process_id)s;

-- name: presence_leave
-- A process that stops cleanly takes its rows with it.
DELETE FROM tidings.feed_processes WHERE process_id = %(process_id)s;

-- name: presence_expire
-- Processes that stopped beating (killed, partitioned): gone, with their rows.
DELETE FROM tidings.feed_processes WHERE expires_at < now();

-- name: presence_of_user
-- Where a user is connected now: one row per live process holding connections.
SELECT f.process_id, p.host, p.pid, p.started_at, p.heartbeat_at, f.connections,
       f.transports, f.since
FROM tidings.feed_presence f
JOIN tidings.feed_processes p ON p.process_id = f.process_id
WHERE f.instance_id = %(instance_id)s AND f.user_id = %(user_id)s
  AND p.expires_at > now()
ORDER BY f.since, f.process_id;
