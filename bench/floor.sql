-- The floor of an append: tidings.events with nothing but its primary key and
-- its position. An experiment for bench/peers.py --baseline, never a migration
-- of tidings (the pending queue, the feeds, the listing, the audit's and
-- replay's lookups all stop working). docs/benchmarks.md ("Migration 0013")
-- has the figures; to measure it, copy this file into a second checkout as
-- the migration after its last one:
--
--   git worktree add --detach /tmp/var-floor HEAD
--   cp bench/floor.sql /tmp/var-floor/tidings/eventstore/migrations/0014_floor.sql
--   .venv/bin/python bench/peers.py --source-events --runs 7 --baseline /tmp/var-floor
ALTER TABLE tidings.events DISABLE TRIGGER events_pending_notifications;
ALTER TABLE tidings.events DISABLE TRIGGER events_feed;
DROP INDEX tidings.events_instance_created_at;
DROP INDEX tidings.events_instance_type_position;
DROP INDEX tidings.events_notification_user;
DROP INDEX tidings.events_requested_at;
DROP INDEX tidings.events_created_at_range;
DROP INDEX tidings.events_feed;
DROP INDEX tidings.events_feed_user;
