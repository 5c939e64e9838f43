-- Statements the benchmark harness runs itself (never timed as pgbatch work).
-- Parsed with pgbatch.queries.parse_named_queries; {schema} is rendered as an identifier.

-- name: backlog_insert
-- A ready backlog for drain scenarios, written server-side in one statement; the payloads
-- are the same small JSON objects that the enqueue scenario sends.
INSERT INTO {schema}.message (id, queue_id, payload)
SELECT n, %(queue_id)s, jsonb_build_object('user_id', n, 'email', 'u' || n || '@example.com')
FROM (SELECT nextval({message_id_seq}) AS n FROM generate_series(1, %(count)s)) AS ids;

-- name: pack_backlog_insert
-- backlog_insert as a producer's batch_enqueue stores it (migration 0005): the same messages
-- and ids, in packs of %(pack)s, the first id as the pack's.
INSERT INTO {schema}.message_pack (id, queue_id, ids, payloads)
SELECT min(n), %(queue_id)s, array_agg(n ORDER BY n),
       jsonb_agg(jsonb_build_object('user_id', n, 'email', 'u' || n || '@example.com')
                 ORDER BY n)
FROM (SELECT nextval({message_id_seq}) AS n, k FROM generate_series(1, %(count)s) AS k) AS ids
GROUP BY (k - 1) / %(pack)s;

-- name: message_count
SELECT count(*) FROM {schema}.message;

-- name: queued_count
-- Messages still in a queue, stored alone or in packs.
SELECT (SELECT count(*) FROM {schema}.message)
       + (SELECT coalesce(sum(cardinality(ids)), 0) FROM {schema}.message_pack);

-- name: archive_count
SELECT count(*) FROM {schema}.archive;

-- name: table_health
-- Dead tuples and sizes of pgbatch's tables (the hot table with its indexes, the archive).
SELECT c.relname,
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0),
       coalesce(s.autovacuum_count, 0) + coalesce(s.vacuum_count, 0),
       pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = %(schema_name)s AND c.relkind = 'r'
  AND (c.relname IN ('message', 'message_pack', 'dead_letter') OR c.relname LIKE 'archive%%')
ORDER BY c.relname;

-- name: index_sizes
SELECT i.relname, pg_relation_size(i.oid)
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %(schema_name)s AND t.relname IN ('message', 'message_pack')
ORDER BY i.relname;

-- name: schema_drop
DROP SCHEMA {schema} CASCADE;

-- name: server_settings
SELECT name, current_setting(name) FROM pg_settings
WHERE name = ANY (%(names)s::text[])
ORDER BY name;

-- name: server_version
SELECT current_setting('server_version');

-- name: bench_user_create_table
-- The transparent-batching scenario's "create user": a row per call.
CREATE TABLE {schema}.bench_user (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id bigint,
    name       text NOT NULL,
    email      text NOT NULL
);

-- name: bench_user_insert_many
-- A batch handler creates its whole batch of users with one statement.
INSERT INTO {schema}.bench_user (message_id, name, email)
SELECT * FROM unnest(%(message_ids)b::bigint[], %(names)b::text[], %(emails)b::text[])
RETURNING message_id, id;

-- name: bench_user_insert_one
-- One transaction per call: the baseline.
INSERT INTO {schema}.bench_user (name, email) VALUES (%(name)s, %(email)s) RETURNING id;

-- name: bench_user_count
SELECT count(*) FROM {schema}.bench_user;

-- name: batch_layout_create
-- The alternative layout measured by limit (d), PgQ-style: messages are never updated or
-- moved; a consumer claims the next id range of a queue by moving a per-queue cursor, and
-- leases and completes the whole range with one row. Only what this benchmark needs: the
-- write pattern per batch, from a backlog of committed messages (a real design must also
-- order claims by commit, as PgQ's ticks do, and keep per-message failures beside it).
CREATE TABLE {schema}.batch_event (
    id          bigint PRIMARY KEY,
    queue_id    integer NOT NULL,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL
);
CREATE TABLE {schema}.batch_cursor (
    queue_id integer PRIMARY KEY,
    position bigint NOT NULL
) WITH (fillfactor = 10);
CREATE TABLE {schema}.batch_lease (
    token        bigint PRIMARY KEY,
    queue_id     integer NOT NULL,
    low          bigint NOT NULL,
    high         bigint NOT NULL,
    leased_until timestamptz NOT NULL,
    done_at      timestamptz
) WITH (fillfactor = 50);

-- name: batch_layout_fill
-- The same backlog as backlog_insert, in the alternative layout.
INSERT INTO {schema}.batch_event (id, queue_id, payload)
SELECT n, %(queue_id)s, jsonb_build_object('user_id', n, 'email', 'u' || n || '@example.com')
FROM generate_series(1, %(count)s) AS n;

-- name: batch_layout_cursor_create
INSERT INTO {schema}.batch_cursor (queue_id, position) VALUES (%(queue_id)s, 0);

-- name: batch_layout_vacuum
VACUUM (ANALYZE) {schema}.batch_event;

-- name: batch_layout_done_count
SELECT coalesce(sum(high - low), 0) FROM {schema}.batch_lease WHERE done_at IS NOT NULL;

-- name: pack_layout_create
-- Limit (g): packs. A producer's batch is stored as rows of up to :batch messages each (a
-- "pack": the first id, the count, the payloads as one JSON array), and the naive loop of
-- limit (b) runs on packs instead of messages: a lease is one row version per pack, the
-- archive one delete and one insert per pack. Row locks and SKIP LOCKED as today, so no
-- claim order by commit and no snapshot horizon (limit (e)'s risk) are needed.
CREATE TABLE {schema}.pack (
    id          bigint PRIMARY KEY,
    queue_id    integer NOT NULL,
    size        integer NOT NULL,
    visible_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    lease_token bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    payloads    jsonb NOT NULL
) WITH (fillfactor = 80);
CREATE INDEX pack_dequeue_idx ON {schema}.pack (queue_id, visible_at);
CREATE TABLE {schema}.pack_archive (
    id          bigint NOT NULL,
    queue_id    integer NOT NULL,
    size        integer NOT NULL,
    attempts    integer NOT NULL,
    enqueued_at timestamptz NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    payloads    jsonb NOT NULL
);
CREATE INDEX pack_archive_id_idx ON {schema}.pack_archive (id);

-- name: pack_layout_fill
-- The same backlog as backlog_insert, in packs of %(pack)s messages.
INSERT INTO {schema}.pack (id, queue_id, size, payloads)
SELECT p * %(pack)s + 1, %(queue_id)s, %(pack)s, (
    SELECT jsonb_agg(
        jsonb_build_object('user_id', n, 'email', 'u' || n || '@example.com') ORDER BY n
    )
    FROM generate_series(p * %(pack)s + 1, (p + 1) * %(pack)s) AS n
)
FROM generate_series(0, %(count)s / %(pack)s - 1) AS p;

-- name: pack_layout_vacuum
VACUUM (ANALYZE) {schema}.pack;

-- name: pack_layout_done_count
SELECT coalesce(sum(size), 0) FROM {schema}.pack_archive;

-- name: pack_layout_claim
-- limit_pack_lease.sql's lease for a Python consumer (the drain-profile scenario's psycopg
-- loop): the next visible pack, leased; its id, token and payloads (no row when drained).
WITH candidate AS (
    SELECT id FROM {schema}.pack
    WHERE queue_id = %(queue_id)s AND visible_at <= now()
    ORDER BY visible_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE {schema}.pack p
SET visible_at = now() + interval '30 seconds', attempts = p.attempts + 1,
    lease_token = nextval({lease_token_seq})
FROM candidate c
WHERE p.id = c.id
RETURNING p.id, p.lease_token, p.payloads;

-- name: pack_layout_complete
-- limit_pack_lease.sql's archive: the pack, fenced by its token, moved to the archive.
WITH done AS (
    DELETE FROM {schema}.pack p
    WHERE p.id = %(id)s AND p.lease_token = %(token)s
    RETURNING p.id, p.queue_id, p.size, p.attempts, p.enqueued_at, p.payloads
)
INSERT INTO {schema}.pack_archive (id, queue_id, size, attempts, enqueued_at, payloads)
SELECT id, queue_id, size, attempts, enqueued_at, payloads FROM done;

-- name: pack_layout_complete_archived
-- limit_pack_lease_archived.sql's archive: the pack, fenced by its token, unpacked into the
-- archive, a row per message.
WITH done AS (
    DELETE FROM {schema}.pack p
    WHERE p.id = %(id)s AND p.lease_token = %(token)s
    RETURNING p.id, p.queue_id, p.attempts, p.enqueued_at, p.payloads
)
INSERT INTO {schema}.archive (id, queue_id, priority, attempts, enqueued_at, payload)
SELECT d.id + e.position - 1, d.queue_id, 0, d.attempts, d.enqueued_at, e.payload
FROM done d
CROSS JOIN LATERAL jsonb_array_elements(d.payloads) WITH ORDINALITY AS e(payload, position);

-- name: pack_layout_sizes
-- How a pack is stored: bytes of its payloads on disk (compressed or out of line) and in
-- memory.
SELECT avg(pg_column_size(payloads))::integer, avg(octet_length(payloads::text))::integer
FROM {schema}.pack;

-- name: ordered_layout_create
-- Limit (e): limit (d)'s write pattern with claims ordered by commit, the question a redesign
-- has to answer first. Each message carries the id of the transaction that inserted it
-- (xid8). A consumer claims, after the queue's cursor (txid, id), only messages whose
-- transaction is older than the current snapshot's xmin: every transaction below xmin has
-- ended, so no message can later commit behind the cursor, and none is skipped whatever
-- order producers commit in. Ids (from a producer's reservoir) order messages only within
-- one transaction.
CREATE TABLE {schema}.ordered_event (
    id          bigint NOT NULL,
    queue_id    integer NOT NULL,
    txid        xid8 NOT NULL DEFAULT pg_current_xact_id(),
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL,
    PRIMARY KEY (queue_id, txid, id)
);
CREATE TABLE {schema}.ordered_cursor (
    queue_id integer PRIMARY KEY,
    txid     xid8 NOT NULL,
    id       bigint NOT NULL
) WITH (fillfactor = 10);
CREATE TABLE {schema}.ordered_lease (
    token        bigint PRIMARY KEY,
    queue_id     integer NOT NULL,
    ids          bigint[] NOT NULL,
    leased_until timestamptz NOT NULL,
    done_at      timestamptz
) WITH (fillfactor = 50);

-- name: ordered_layout_fill
-- The same backlog as batch_layout_fill, written by 100 transactions of its own (so that
-- claims cross transaction boundaries); the caller commits each.
INSERT INTO {schema}.ordered_event (id, queue_id, payload)
SELECT n, %(queue_id)s, jsonb_build_object('user_id', n, 'email', 'u' || n || '@example.com')
FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS n;

-- name: ordered_layout_cursor_create
INSERT INTO {schema}.ordered_cursor (queue_id, txid, id) VALUES (%(queue_id)s, '0', 0);

-- name: ordered_layout_vacuum
VACUUM (ANALYZE) {schema}.ordered_event;

-- name: ordered_layout_claim
-- limit_ordered_lease.sql's claim for a Python consumer (the drain-profile scenario's
-- psycopg loop): the next batch after the queue's cursor, leased with one row; the lease's
-- token, the messages' ids and payloads (no row when the queue is drained).
WITH cursor_now AS (
    SELECT txid, id FROM {schema}.ordered_cursor WHERE queue_id = %(queue_id)s FOR UPDATE
),
picked AS (
    SELECT e.txid, e.id, e.payload
    FROM cursor_now c
    CROSS JOIN LATERAL (
        SELECT e.txid, e.id, e.payload
        FROM {schema}.ordered_event e
        WHERE e.queue_id = %(queue_id)s
          AND (e.txid, e.id) > (c.txid, c.id)
          AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY e.txid, e.id
        LIMIT %(batch)s
    ) AS e
),
moved AS (
    UPDATE {schema}.ordered_cursor c SET txid = last.txid, id = last.id
    FROM (SELECT txid, id FROM picked ORDER BY txid DESC, id DESC LIMIT 1) AS last
    WHERE c.queue_id = %(queue_id)s
    RETURNING c.queue_id
),
lease AS (
    INSERT INTO {schema}.ordered_lease (token, queue_id, ids, leased_until)
    SELECT nextval({lease_token_seq}), %(queue_id)s, array_agg(id), now() + interval '30 seconds'
    FROM picked
    HAVING count(*) > 0
    RETURNING token
)
SELECT (SELECT token FROM lease) AS token, array_agg(p.id) AS ids,
       array_agg(p.payload) AS payloads, (SELECT count(*) FROM moved) AS moved
FROM picked p
HAVING count(*) > 0;

-- name: ordered_layout_complete
UPDATE {schema}.ordered_lease SET done_at = now() WHERE token = %(token)s AND done_at IS NULL;

-- name: horizon_holder_create
-- What the claim-horizon scenario's long transactions write to.
CREATE TABLE {schema}.horizon_holder (n bigint GENERATED ALWAYS AS IDENTITY);

-- name: ordered_layout_analyze
-- Statistics for the latency query below: without them it joins the claimed ids to the log
-- by a nested loop over a sequential scan (minutes at 100,000 messages).
ANALYZE {schema}.ordered_event, {schema}.ordered_lease;

-- name: ordered_layout_claim_latency
-- Seconds from each event's enqueue (its transaction's start) to its claim (the claiming
-- transaction's start): the median and the 99th percentile.
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
           ORDER BY extract(epoch FROM (l.leased_until - interval '30 seconds') - e.enqueued_at))
FROM {schema}.ordered_lease l
CROSS JOIN LATERAL unnest(l.ids) AS claimed(id)
JOIN {schema}.ordered_event e ON e.id = claimed.id;

-- name: ordered_layout_done_count
SELECT coalesce(sum(cardinality(ids)), 0) FROM {schema}.ordered_lease WHERE done_at IS NOT NULL;
