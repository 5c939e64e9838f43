-- pgbench script, limit (g): limit (b)'s naive loop on packs (see pack_layout_create in
-- helpers.sql), with packs as large as the batch, so a lease takes one pack.
-- 1. Lease the next visible pack with FOR UPDATE SKIP LOCKED; its payloads go to the client.
WITH candidate AS (
    SELECT id FROM pack
    WHERE queue_id = :queue_id AND visible_at <= now()
    ORDER BY visible_at
    LIMIT 1
    FOR UPDATE SKIP LOCKED
),
leased AS (
    UPDATE pack p
    SET visible_at = now() + interval '30 seconds', attempts = p.attempts + 1,
        lease_token = nextval('lease_token_seq')
    FROM candidate c
    WHERE p.id = c.id
    RETURNING p.id, p.lease_token, p.payloads
)
SELECT id, lease_token AS token, payloads FROM leased
\gset
-- 2. Move the pack (fenced by the token) into the archive.
WITH done AS (
    DELETE FROM pack p
    WHERE p.id = :id AND p.lease_token = :token
    RETURNING p.id, p.queue_id, p.size, p.attempts, p.enqueued_at, p.payloads
)
INSERT INTO pack_archive (id, queue_id, size, attempts, enqueued_at, payloads)
SELECT id, queue_id, size, attempts, enqueued_at, payloads FROM done;
