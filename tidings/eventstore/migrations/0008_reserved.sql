-- Placeholder: version 8 belongs to another branch (issues 10 and 12) merged
-- before this one. Delete this file when that branch's migration takes the number.
SELECT 1;
