-- name: message_vacuum_candidate
-- Dead and live tuples of the hot table, and whether this role may vacuum it (owner).
SELECT s.n_dead_tup, s.n_live_tup, pg_has_role(c.relowner, 'USAGE') AS may_vacuum
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = to_regclass({message_table});

-- name: message_vacuum
-- SKIP_LOCKED: when another worker (or autovacuum) is already at it, this one returns at once.
VACUUM (SKIP_LOCKED) {schema}.message;

-- name: message_pack_vacuum_candidate
-- message_vacuum_candidate for the packs' table (migration 0005).
SELECT s.n_dead_tup, s.n_live_tup, pg_has_role(c.relowner, 'USAGE') AS may_vacuum
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_stat_user_tables s ON s.relid = c.oid
WHERE c.oid = to_regclass({message_pack_table});

-- name: message_pack_vacuum
VACUUM (SKIP_LOCKED) {schema}.message_pack;
