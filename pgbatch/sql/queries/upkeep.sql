-- name: hot_tables_vacuum_candidates
-- Per hot table ("message", and "message_pack" since migration 0005): its name, dead and
-- live tuples, and whether this role may vacuum it (owner). One round trip for both.
SELECT c.relname, s.n_dead_tup, s.n_live_tup, pg_has_role(c.relowner, 'USAGE') AS may_vacuum
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid IN (to_regclass({message_table}), to_regclass({message_pack_table}))
ORDER BY c.relname;

-- name: message_vacuum
-- SKIP_LOCKED: when another worker (or autovacuum) is already at it, this one returns at once.
VACUUM (SKIP_LOCKED) {schema}.message;

-- name: message_pack_vacuum
VACUUM (SKIP_LOCKED) {schema}.message_pack;
