-- The users read model: one row per instance and user. The statements that
-- write it name the table {users}: tidings.users, or the audit's private copy.

-- name: user_added
INSERT INTO {users} AS u (
    instance_id, user_id, resource_owner, username, first_name, last_name,
    display_name, preferred_language, last_email, verified_email, last_phone,
    verified_phone, state, sequence, change_date)
VALUES (
    %(instance_id)s, %(user_id)s, %(resource_owner)s, %(username)s, %(first_name)s,
    %(last_name)s, %(display_name)s, %(preferred_language)s, %(email)s,
    CASE WHEN %(email_verified)s THEN %(email)s END, %(phone)s,
    CASE WHEN %(phone_verified)s THEN %(phone)s END, 'active', %(sequence)s, %(change_date)s)
ON CONFLICT (instance_id, user_id) DO UPDATE SET
    resource_owner = excluded.resource_owner,
    username = excluded.username,
    first_name = excluded.first_name,
    last_name = excluded.last_name,
    display_name = excluded.display_name,
    preferred_language = excluded.preferred_language,
    last_email = excluded.last_email,
    verified_email = excluded.verified_email,
    last_phone = excluded.last_phone,
    verified_phone = excluded.verified_phone,
    state = 'active',
    sequence = excluded.sequence,
    change_date = excluded.change_date;

-- name: user_profile_changed
UPDATE {users} SET
    first_name = coalesce(%(first_name)s, first_name),
    last_name = coalesce(%(last_name)s, last_name),
    display_name = coalesce(%(display_name)s, display_name),
    preferred_language = coalesce(%(preferred_language)s, preferred_language),
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_email_changed
-- A new address is unverified until user.human.email.verified; until then
-- verified messages still go to the last verified one.
UPDATE {users} SET
    last_email = %(email)s,
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_email_verified
UPDATE {users} SET
    verified_email = last_email,
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_phone_changed
UPDATE {users} SET
    last_phone = %(phone)s,
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_phone_verified
UPDATE {users} SET
    verified_phone = last_phone,
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_phone_removed
UPDATE {users} SET
    last_phone = NULL, verified_phone = NULL,
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_username_changed
UPDATE {users} SET
    username = %(username)s,
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_removed
UPDATE {users} SET
    state = 'removed',
    sequence = %(sequence)s, change_date = %(change_date)s
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;

-- name: user_get
SELECT instance_id, user_id, resource_owner, username, first_name, last_name, display_name,
       preferred_language, last_email, verified_email, last_phone, verified_phone, state,
       sequence, change_date
FROM tidings.users
WHERE instance_id = %(instance_id)s AND user_id = %(user_id)s;


-- name: users_reset
DELETE FROM {users};

-- name: users_get_many
SELECT u.instance_id, u.user_id, u.resource_owner, u.username, u.first_name, u.last_name,
       u.display_name, u.preferred_language, u.last_email, u.verified_email, u.last_phone,
       u.verified_phone, u.state, u.sequence, u.change_date
FROM tidings.users u
JOIN unnest(%(instance_ids)s::text[], %(user_ids)s::text[]) AS wanted(instance_id, user_id)
  ON u.instance_id = wanted.instance_id AND u.user_id = wanted.user_id;
