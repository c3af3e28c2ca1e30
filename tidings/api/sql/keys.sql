-- Named queries of the API keys read model (tidings.api_keys, migration 0008).

-- name: key_by_hash
SELECT instance_id, key_id, name, scopes, revoked_at
FROM tidings.api_keys
WHERE key_hash = %(key_hash)s;

-- name: list_keys
SELECT instance_id, key_id, name, scopes, created_at, created_by, revoked_at, revoked_by
FROM tidings.api_keys
WHERE (%(instance_id)s::text IS NULL OR instance_id = %(instance_id)s)
ORDER BY instance_id, created_at, key_id;
