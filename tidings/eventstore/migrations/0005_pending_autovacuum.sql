-- Every settled notification leaves a dead row in the pending queue (rows are
-- short-lived by design). With the default scale factor, a queue of a few
-- thousand live rows would carry millions of dead ones between vacuums and
-- claims would slow down; vacuum it after a fixed number of changes instead.
ALTER TABLE tidings.pending_notifications SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 10000,
    autovacuum_analyze_scale_factor = 0,
    autovacuum_analyze_threshold = 10000
);
