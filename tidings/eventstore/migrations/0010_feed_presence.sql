-- Presence: which serve process holds live feed connections of which user.
--
-- Each serve process only knows its own connections; to answer "who is
-- connected, where" for all of them, each one keeps its rows here. A process
-- writes when its connections change (gathered: one statement per flush, never
-- one per message) and beats its heartbeat; a process that dies stops beating,
-- its row expires at expires_at and is deleted by the next live process's
-- heartbeat, its presence rows with it. Nothing here is an event: presence is
-- what is true now, not history.
CREATE TABLE tidings.feed_processes (
    process_id   text        PRIMARY KEY,  -- host:pid:random, one per hub run
    host         text        NOT NULL,
    pid          integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL      -- no heartbeat by then: the process is gone
);

CREATE INDEX feed_processes_expires_at ON tidings.feed_processes (expires_at);

CREATE TABLE tidings.feed_presence (
    instance_id text        NOT NULL,
    user_id     text        NOT NULL,
    process_id  text        NOT NULL REFERENCES tidings.feed_processes ON DELETE CASCADE,
    connections integer     NOT NULL CHECK (connections > 0),
    transports  jsonb       NOT NULL,      -- {"sse": 1, "ws": 2, "poll": 0}
    since       timestamptz NOT NULL,      -- the oldest of these connections opened then
    PRIMARY KEY (instance_id, user_id, process_id)
);

CREATE INDEX feed_presence_process ON tidings.feed_presence (process_id);
