-- pgbench script, limit (b) and (c): the naive consumer loop in two transactions.
-- 1. Lease :batch visible messages with FOR UPDATE SKIP LOCKED (one lease token per call,
--    attempts counted, payloads shipped to the client as a consumer needs them).
WITH candidate AS (
    SELECT id FROM message
    WHERE queue_id = :queue_id AND visible_at <= now()
    ORDER BY priority DESC, visible_at
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
),
token AS (SELECT nextval('lease_token_seq') AS value),
leased AS (
    UPDATE message m
    SET visible_at = now() + interval '30 seconds', attempts = m.attempts + 1,
        lease_token = token.value
    FROM candidate c, token
    WHERE m.id = c.id
    RETURNING m.id, m.lease_token, m.payload
)
SELECT array_agg(id) AS ids, max(lease_token) AS token, array_agg(payload) AS payloads
FROM leased
\gset
-- 2. Move the leased messages (fenced by the token) into the archive.
WITH done AS (
    DELETE FROM message m
    WHERE m.id = ANY (:ids::bigint[]) AND m.lease_token = :token
    RETURNING m.id, m.queue_id, m.priority, m.attempts, m.enqueued_at, m.payload
)
INSERT INTO archive (id, queue_id, priority, attempts, enqueued_at, payload)
SELECT id, queue_id, priority, attempts, enqueued_at, payload FROM done;
