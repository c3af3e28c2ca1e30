-- Reserved: issue-14 needs migration 0012 while 0008..0011 are being written on
-- other branches; the loader wants 1..n without gaps. This placeholder does
-- nothing and gives way to the real migration of that number at merge.
SELECT 1;
