-- pgbench script, limit (d): the alternative layout (see batch_layout_create in helpers.sql).
-- 1. Claim the next :batch ids of the queue, lease them with one row, return the payloads.
WITH claim AS (
    UPDATE batch_cursor SET position = position + :batch
    WHERE queue_id = :queue_id
    RETURNING position - :batch AS low, position AS high
),
lease AS (
    INSERT INTO batch_lease (token, queue_id, low, high, leased_until)
    SELECT nextval('lease_token_seq'), :queue_id, low, high, now() + interval '30 seconds'
    FROM claim
    RETURNING token, low, high
)
SELECT max(l.token) AS token, array_agg(e.id) AS ids, array_agg(e.payload) AS payloads
FROM lease l JOIN batch_event e ON e.id > l.low AND e.id <= l.high
\gset
-- 2. Complete the batch: one row, fenced by its token.
UPDATE batch_lease SET done_at = now() WHERE token = :token AND done_at IS NULL;
