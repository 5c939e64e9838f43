-- name: queue_insert
INSERT INTO {schema}.queue (name, lease_seconds, max_attempts, backoff_base_seconds,
                   backoff_max_seconds, max_payload_bytes)
VALUES (%(name)s, %(lease_seconds)s, %(max_attempts)s, %(backoff_base_seconds)s,
        %(backoff_max_seconds)s, %(max_payload_bytes)s)
ON CONFLICT (name) DO NOTHING
RETURNING id;

-- name: queue_get
SELECT id, name, lease_seconds, max_attempts, backoff_base_seconds, backoff_max_seconds,
       max_payload_bytes, paused, created_at
FROM {schema}.queue WHERE name = %(name)s;

-- name: queue_list
SELECT id, name, lease_seconds, max_attempts, backoff_base_seconds, backoff_max_seconds,
       max_payload_bytes, paused, created_at
FROM {schema}.queue ORDER BY name;

-- name: queue_set_paused
UPDATE {schema}.queue SET paused = %(paused)s WHERE name = %(name)s RETURNING id;

-- name: queue_update_settings
UPDATE {schema}.queue SET
    lease_seconds = coalesce(%(lease_seconds)s, lease_seconds),
    max_attempts = coalesce(%(max_attempts)s, max_attempts),
    backoff_base_seconds = coalesce(%(backoff_base_seconds)s, backoff_base_seconds),
    backoff_max_seconds = coalesce(%(backoff_max_seconds)s, backoff_max_seconds),
    max_payload_bytes = coalesce(%(max_payload_bytes)s, max_payload_bytes)
WHERE name = %(name)s
RETURNING id;

-- name: queue_delete
-- The queue row goes last so that a concurrent enqueue cannot leave orphans behind it.
WITH gone_messages AS (DELETE FROM {schema}.message WHERE queue_id = %(queue_id)s),
     gone_packs AS (DELETE FROM {schema}.message_pack WHERE queue_id = %(queue_id)s),
     gone_dead AS (DELETE FROM {schema}.dead_letter WHERE queue_id = %(queue_id)s),
     gone_archive AS (DELETE FROM {schema}.archive WHERE queue_id = %(queue_id)s)
DELETE FROM {schema}.queue WHERE id = %(queue_id)s RETURNING id;

-- name: queue_purge_packs
-- One pass of a purge (operations.purge_passes), first half: the queue's packs, leased or
-- not; returns how many messages they held.
WITH gone AS (
    DELETE FROM {schema}.message_pack WHERE queue_id = %(queue_id)s
    RETURNING cardinality(ids) AS messages
)
SELECT coalesce(sum(messages), 0) FROM gone;

-- name: queue_purge_messages
-- Second half, a statement of its own so that its snapshot sees the messages that an unpack
-- the first half waited for moved into "message"; returns how many.
WITH gone AS (DELETE FROM {schema}.message WHERE queue_id = %(queue_id)s RETURNING 1)
SELECT count(*) FROM gone;

-- name: queue_stats
-- Counts by state with the database clock; oldest_ready_age in seconds. Messages of packs
-- (migration 0005) count one each; a pack is never delayed, so one not visible is leased.
WITH m AS (
    SELECT visible_at, lease_token IS NOT NULL AS has_token, 1 AS messages
    FROM {schema}.message WHERE queue_id = %(queue_id)s
    UNION ALL
    SELECT visible_at, true, cardinality(ids)
    FROM {schema}.message_pack WHERE queue_id = %(queue_id)s
)
SELECT
    coalesce(sum(m.messages) FILTER (WHERE m.visible_at <= now()), 0)::bigint AS ready,
    coalesce(sum(m.messages) FILTER (WHERE m.visible_at > now() AND m.has_token), 0)::bigint
        AS leased,
    coalesce(sum(m.messages) FILTER (WHERE m.visible_at > now() AND NOT m.has_token), 0)::bigint
        AS delayed,
    (SELECT count(*) FROM {schema}.archive a WHERE a.queue_id = %(queue_id)s) AS archived,
    (SELECT count(*) FROM {schema}.dead_letter d WHERE d.queue_id = %(queue_id)s) AS dead,
    coalesce(extract(epoch FROM now() - min(m.visible_at) FILTER (WHERE m.visible_at <= now())), 0)::double precision AS oldest_ready_age,
    (SELECT count(*) FROM {schema}.archive a
      WHERE a.queue_id = %(queue_id)s AND a.archived_at > now() - interval '1 minute') AS archived_last_minute
FROM m;

-- name: notify_queue
-- One wake-up per enqueue transaction; delivered at commit.
SELECT pg_notify(%(channel)s, %(payload)s);
