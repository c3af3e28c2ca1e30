-- Placeholder (empty) so that this branch's 0011 applies in order; it gives way
-- to the real 0010 at merge.
SELECT 1;
