-- name: maintenance_cutoff
-- Retention cutoffs come from the database clock, like leases.
SELECT now() - %(older_than)s::interval;

-- name: maintenance_set_lock_timeout
-- For the current transaction only: a DROP that waits longer gives up rather than stall
-- every archiving worker queued behind it.
SELECT set_config('lock_timeout', %(lock_timeout)s, true);

-- name: archive_partition_list
-- The archive's partitions with their range; both bounds are NULL for the default partition.
SELECT c.relname,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \(''([^'']*)''\)'))[1]::timestamptz
           AS lower_bound,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']*)''\)'))[1]::timestamptz
           AS upper_bound
FROM pg_catalog.pg_inherits i
JOIN pg_catalog.pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = (
    SELECT p.oid FROM pg_catalog.pg_class p
    JOIN pg_catalog.pg_namespace n ON n.oid = p.relnamespace
    WHERE n.nspname = %(schema)s AND p.relname = 'archive'
)
ORDER BY upper_bound NULLS LAST, c.relname;

-- name: archive_partition_drop
-- The partition's name is composed in at run time with psycopg.sql.Identifier.
DROP TABLE {{partition}};

-- name: archive_partition_holds_other_queues
-- Whether a partition holds rows of any queue but this one (then it cannot be dropped for it).
SELECT EXISTS (SELECT 1 FROM {{partition}} WHERE queue_id <> %(queue_id)s);

-- name: archive_delete_older
-- Row-by-row retention, for what partition drops cannot cover: the partition that holds the
-- cutoff, the default partition, and a single queue's rows in shared partitions. Partition
-- pruning limits the scan to partitions that can hold rows older than the cutoff.
WITH gone AS (
    DELETE FROM {schema}.archive
    WHERE archived_at < %(cutoff)s
      AND (%(queue_id)s::integer IS NULL OR queue_id = %(queue_id)s::integer)
    RETURNING 1
)
SELECT count(*) FROM gone;

-- name: maintenance_table_health
-- The hot tables' tuples, sizes and vacuum history, summed over "message" and (migration
-- 0005) "message_pack": vacuum history the latest of either (statistics lag by up to a
-- second). No row when the schema has no pgbatch tables.
SELECT coalesce(sum(s.n_live_tup), 0)::bigint, coalesce(sum(s.n_dead_tup), 0)::bigint,
       sum(pg_relation_size(c.oid))::bigint, sum(pg_indexes_size(c.oid))::bigint,
       max(s.last_autovacuum), max(s.last_vacuum),
       coalesce(sum(s.autovacuum_count), 0)::bigint,
       (SELECT coalesce(sum(pg_total_relation_size(t.relid)), 0)::bigint
        FROM pg_partition_tree((SELECT a.oid FROM pg_catalog.pg_class a
                                WHERE a.relnamespace = min(n.oid) AND a.relname = 'archive')::regclass) t)
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
WHERE n.nspname = %(schema)s AND c.relname IN ('message', 'message_pack')
HAVING count(*) > 0;

-- name: maintenance_index_sizes
SELECT ic.relname, pg_relation_size(ic.oid)
FROM pg_catalog.pg_index x
JOIN pg_catalog.pg_class ic ON ic.oid = x.indexrelid
JOIN pg_catalog.pg_class tc ON tc.oid = x.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = tc.relnamespace
WHERE n.nspname = %(schema)s AND tc.relname IN ('message', 'message_pack')
ORDER BY ic.relname;

-- name: maintenance_xmin_holders
-- Whatever holds back this database's xmin horizon, oldest first: while it does, vacuum
-- cannot remove the dead tuples that leasing and archiving leave in the hot table.
-- Sessions of other databases do not hold back ours (walsenders and slots do).
SELECT kind, holder, xmin_age, seconds, detail FROM (
    SELECT 'session' AS kind, a.pid::text AS holder, age(a.backend_xmin)::bigint AS xmin_age,
           -- Running: its snapshot is at most as old as the statement (read committed takes
           -- one per statement). Idle in a transaction with a snapshot: as old as the
           -- transaction (repeatable read, an open cursor).
           extract(epoch FROM now() - coalesce(
               CASE WHEN a.state = 'active' THEN a.query_start END, a.xact_start,
               a.backend_start))::double precision AS seconds,
           concat_ws(', ', nullif(a.application_name, ''), a.usename::text, a.state) AS detail
    FROM pg_catalog.pg_stat_activity a
    WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()
      AND (a.datname = current_database() OR a.backend_type = 'walsender')
      -- A running VACUUM holds back no other vacuum (lazy vacuum is left out of the horizon),
      -- and autovacuum is the server's own: neither is a holder worth a warning. They run
      -- longest right after a real holder lets go, with the most dead tuples to remove.
      AND a.backend_type <> 'autovacuum worker'
      AND NOT (a.state = 'active' AND a.query ~* '^\s*vacuum\M')
    UNION ALL
    SELECT 'prepared transaction', p.gid, age(p.transaction)::bigint,
           extract(epoch FROM now() - p.prepared)::double precision, p.owner::text
    FROM pg_catalog.pg_prepared_xacts p
    WHERE p.database = current_database()
    UNION ALL
    SELECT 'replication slot', r.slot_name::text, age(r.xmin)::bigint, NULL::double precision,
           r.slot_type
    FROM pg_catalog.pg_replication_slots r
    WHERE r.xmin IS NOT NULL
) holders
ORDER BY xmin_age DESC, seconds DESC NULLS LAST
LIMIT %(limit)s;
