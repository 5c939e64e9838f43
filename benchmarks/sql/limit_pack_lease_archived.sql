-- pgbench script, limit (h): limit (g) with an archive row per message, as today's archive
-- keeps them (results, look-ups by id, the CLI's listing): the pack is leased as one row,
-- then deleted and unpacked into the archive.
-- 1. Lease the next visible pack, as in limit (g).
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
-- 2. Move the pack (fenced by the token) into the archive, a row per message.
WITH done AS (
    DELETE FROM pack p
    WHERE p.id = :id AND p.lease_token = :token
    RETURNING p.id, p.queue_id, p.attempts, p.enqueued_at, p.payloads
)
INSERT INTO archive (id, queue_id, priority, attempts, enqueued_at, payload)
SELECT d.id + e.position - 1, d.queue_id, 0, d.attempts, d.enqueued_at, e.payload
FROM done d
CROSS JOIN LATERAL jsonb_array_elements(d.payloads) WITH ORDINALITY AS e(payload, position);
