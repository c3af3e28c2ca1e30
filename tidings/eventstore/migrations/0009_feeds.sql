-- The in-app feed: an inline projection of the notification aggregate.
--
-- One row per in-app notification (instance, notification; it belongs to one
-- user) with what it shows and the user's engagement, and one row of counts
-- per user. Triggers on tidings.events keep both in the same transaction as
-- the event that changes them, whoever writes it: the notification.sent that
-- carries an `inapp` item adds it, notification.seen/read/unread/archived/
-- unarchived change it. So a badge (the counts) can never disagree with the
-- list (the items). Retention drops old items from here only; the log keeps
-- them, and tidings.rebuild_feed() rebuilds both tables from the log.
CREATE TABLE tidings.feed_items (
    instance_id     text        NOT NULL,
    notification_id text        NOT NULL,
    user_id         text        NOT NULL,
    position        bigint      NOT NULL,  -- of its notification.sent: its place in the feed
    sequence        bigint      NOT NULL,  -- the notification's last sequence: what the next mark expects
    sent_at         timestamptz NOT NULL,
    message_type    text        NOT NULL,
    lang            text        NOT NULL,
    title           text        NOT NULL,
    body            text        NOT NULL,
    action_url      text        NOT NULL,
    data            jsonb       NOT NULL,
    seen_at         timestamptz,
    read_at         timestamptz,           -- read implies seen
    archived_at     timestamptz,
    PRIMARY KEY (instance_id, notification_id)
);

-- A user's feed, newest first, paged by position.
CREATE INDEX feed_items_user ON tidings.feed_items (instance_id, user_id, position DESC);
-- Retention drops by age.
CREATE INDEX feed_items_sent_at ON tidings.feed_items (sent_at);

-- The badge. total, unread and unseen count the items that are not archived.
-- pruned_through is the position of the newest item retention dropped: a
-- stream resumed from before it gets a reset (refetch) instead of a replay.
CREATE TABLE tidings.feed_counts (
    instance_id    text    NOT NULL,
    user_id        text    NOT NULL,
    total          integer NOT NULL DEFAULT 0 CHECK (total >= 0),
    unread         integer NOT NULL DEFAULT 0 CHECK (unread >= 0),
    unseen         integer NOT NULL DEFAULT 0 CHECK (unseen >= 0),
    pruned_through bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (instance_id, user_id)
);

-- The feed's events in the log: in-app sends and the engagement marks. The
-- serve processes read them after their cursor (all users) and after a
-- client's cursor (one user); the two partial indexes below serve those reads
-- and cost nothing for any other event. The user of an event is the sent
-- item's user_id, or the mark's. Queries must repeat this predicate and this
-- expression word for word for the planner to use the indexes.
CREATE INDEX events_feed ON tidings.events (position)
    WHERE aggregate_type = 'notification'
      AND (event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                          'notification.archived', 'notification.unarchived')
           OR (event_type = 'notification.sent' AND payload ? 'inapp'));

CREATE INDEX events_feed_user
    ON tidings.events (instance_id, (coalesce(payload #>> '{inapp,user_id}', payload ->> 'user_id')),
                       position)
    WHERE aggregate_type = 'notification'
      AND (event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                          'notification.archived', 'notification.unarchived')
           OR (event_type = 'notification.sent' AND payload ? 'inapp'));

-- A mark changes its item and its user's counts. No item: the notification
-- was not sent in-app, or retention dropped it (or the mark came before the
-- send); the log keeps the mark all the same.
CREATE FUNCTION tidings.feed_mark(
    p_instance_id text, p_notification_id text, p_user_id text, p_event_type text,
    p_sequence bigint, p_position bigint, p_at timestamptz
) RETURNS void LANGUAGE plpgsql AS $$
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

-- The feed follows each appending statement: first its in-app sends add
-- items and are counted, then its marks are applied in log order. A bulk of
-- outcomes holds sends for many users, and two bulks appended at once would
-- deadlock if each took its users' counts rows in its own order: every
-- statement takes them in one order, (instance, user), so they queue instead
-- (an INSERT ... SELECT ... ORDER BY takes its rows in that order).
CREATE FUNCTION tidings.feed_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER events_feed
    AFTER INSERT ON tidings.events
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT
    EXECUTE FUNCTION tidings.feed_apply();

-- The feed as the log defines it (retention aside): every in-app send with
-- the marks that followed it folded as the trigger folds them. A read time is
-- the first read after the last unread; an archive time likewise.
CREATE VIEW tidings.feed_from_log AS
WITH marks AS (
    SELECT m.instance_id, m.aggregate_id, m.event_type, m.sequence, m.created_at
    FROM tidings.events m
    WHERE m.aggregate_type = 'notification'
      AND m.event_type IN ('notification.seen', 'notification.read', 'notification.unread',
                           'notification.archived', 'notification.unarchived')
)
SELECT s.instance_id,
       s.aggregate_id AS notification_id,
       coalesce(s.payload #>> '{inapp,user_id}', '') AS user_id,
       s.position,
       greatest(s.sequence, (SELECT max(k.sequence) FROM marks k
                             WHERE k.instance_id = s.instance_id
                               AND k.aggregate_id = s.aggregate_id)) AS sequence,
       s.created_at AS sent_at,
       coalesce(s.payload #>> '{inapp,message_type}', '') AS message_type,
       coalesce(s.payload #>> '{inapp,lang}', '') AS lang,
       coalesce(s.payload #>> '{inapp,title}', '') AS title,
       coalesce(s.payload #>> '{inapp,body}', '') AS body,
       coalesce(s.payload #>> '{inapp,action_url}', '') AS action_url,
       coalesce(s.payload #> '{inapp,data}', '{}'::jsonb) AS data,
       (SELECT min(k.created_at) FROM marks k
        WHERE k.instance_id = s.instance_id AND k.aggregate_id = s.aggregate_id
          AND k.sequence > s.sequence
          AND k.event_type IN ('notification.seen', 'notification.read')) AS seen_at,
       (SELECT min(k.created_at) FROM marks k
        WHERE k.instance_id = s.instance_id AND k.aggregate_id = s.aggregate_id
          AND k.event_type = 'notification.read'
          AND k.sequence > greatest(s.sequence, coalesce(
              (SELECT max(u.sequence) FROM marks u
               WHERE u.instance_id = s.instance_id AND u.aggregate_id = s.aggregate_id
                 AND u.event_type = 'notification.unread'), 0))) AS read_at,
       (SELECT min(k.created_at) FROM marks k
        WHERE k.instance_id = s.instance_id AND k.aggregate_id = s.aggregate_id
          AND k.event_type = 'notification.archived'
          AND k.sequence > greatest(s.sequence, coalesce(
              (SELECT max(u.sequence) FROM marks u
               WHERE u.instance_id = s.instance_id AND u.aggregate_id = s.aggregate_id
                 AND u.event_type = 'notification.unarchived'), 0))) AS archived_at
FROM tidings.events s
WHERE s.aggregate_type = 'notification'
  AND s.event_type = 'notification.sent'
  AND s.payload ? 'inapp'
  AND jsonb_typeof(s.payload -> 'inapp') = 'object'
  -- the first in-app send of a notification is its item (the trigger keeps the first too)
  AND NOT EXISTS (
      SELECT 1 FROM tidings.events f
      WHERE f.instance_id = s.instance_id AND f.aggregate_type = 'notification'
        AND f.aggregate_id = s.aggregate_id AND f.event_type = 'notification.sent'
        AND f.payload ? 'inapp' AND f.sequence < s.sequence);

COMMENT ON VIEW tidings.feed_from_log IS
    'The feed items rebuilt from the log, retention aside: what rebuild_feed() writes';

-- Rebuild the feed from the log, keeping the items sent at or after p_since
-- (now minus the retention). Counts follow from the items; pruned_through
-- from the in-app sends before p_since.
CREATE FUNCTION tidings.rebuild_feed(p_since timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
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
