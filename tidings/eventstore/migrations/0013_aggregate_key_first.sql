-- One index fewer per appended event: the primary key leads with the aggregate's id.
--
-- The primary key was (instance_id, aggregate_type, aggregate_id, sequence),
-- and 0006 added events_aggregate_id (aggregate_id, aggregate_type, sequence)
-- for the lookups of one aggregate by id in any instance (`tidings history`,
-- `replay --notification`, `replay --user`, the audit's trails). The same key
-- in the order (aggregate_id, aggregate_type, instance_id, sequence) serves
-- both:
--
-- - every lookup of one aggregate in one instance (the append's head lookup,
--   an outcome's fence, the audit's joins) fixes all three text columns, so
--   the order of the columns does not matter to it, and the sequence still
--   follows them (the last event is still one step back from the end);
-- - a lookup by id alone, or by id and type, is a prefix of the new key.
--
-- The uniqueness is the same (same columns), so is the constraint's name.
-- An append now inserts into one btree fewer, and into a key whose first
-- column is nearly unique: most comparisons end after one column, where the
-- old key compared the instance and the type (equal in most neighbours)
-- first. Measured with bench/append_cost.py and bench/peers.py
-- (docs/benchmarks.md).
--
-- No query of tidings reads the log by instance and type without an id.
--
-- The key is rebuilt: it reads the whole table once and blocks appends
-- meanwhile (docs/operations.md has the upgrade note).

ALTER TABLE tidings.events DROP CONSTRAINT events_aggregate_sequence;
ALTER TABLE tidings.events ADD CONSTRAINT events_aggregate_sequence
    PRIMARY KEY (aggregate_id, aggregate_type, instance_id, sequence);
DROP INDEX tidings.events_aggregate_id;
