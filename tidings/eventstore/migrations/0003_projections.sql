-- Read models and the bookkeeping of the projector.

-- What a message needs to know about a user, per instance.
CREATE TABLE tidings.users (
    instance_id        text        NOT NULL,
    user_id            text        NOT NULL,
    resource_owner     text        NOT NULL DEFAULT '',
    username           text        NOT NULL DEFAULT '',
    first_name         text        NOT NULL DEFAULT '',
    last_name          text        NOT NULL DEFAULT '',
    display_name       text        NOT NULL DEFAULT '',
    preferred_language text        NOT NULL DEFAULT '',
    last_email         text,
    verified_email     text,
    last_phone         text,
    verified_phone     text,
    state              text        NOT NULL DEFAULT 'active'
        CONSTRAINT users_state CHECK (state IN ('active', 'removed')),
    sequence           bigint      NOT NULL,
    change_date        timestamptz NOT NULL,
    PRIMARY KEY (instance_id, user_id)
);

-- The last position each projection has handled, written in the same
-- transaction as the projection's effects.
CREATE TABLE tidings.projection_checkpoints (
    name       text        PRIMARY KEY,
    position   bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Events a projection could not handle (a payload that does not validate, a
-- handler that failed for that event alone); skipped, never retried on their own.
CREATE TABLE tidings.projection_failures (
    name           text        NOT NULL,
    position       bigint      NOT NULL,
    instance_id    text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    sequence       bigint      NOT NULL,
    event_type     text        NOT NULL,
    error          text        NOT NULL,
    failed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, position)
);
