-- pgbench script, limit (e): limit (d) with claims ordered by commit (ordered_layout_create
-- in helpers.sql). Consumers take turns on the queue's cursor row (FOR UPDATE: the second
-- waits for the first to commit, then reads where it left the cursor).
-- 1. Claim the next :batch messages of ended transactions, lease them with one row.
WITH cursor_now AS (
    SELECT txid, id FROM ordered_cursor WHERE queue_id = :queue_id FOR UPDATE
),
picked AS (
    -- LATERAL, so that the cursor's position is an index condition of the scan (as a join
    -- filter the scan would walk every message claimed before).
    SELECT e.txid, e.id, e.payload
    FROM cursor_now c
    CROSS JOIN LATERAL (
        SELECT e.txid, e.id, e.payload
        FROM ordered_event e
        WHERE e.queue_id = :queue_id
          AND (e.txid, e.id) > (c.txid, c.id)
          AND e.txid < pg_snapshot_xmin(pg_current_snapshot())
        ORDER BY e.txid, e.id
        LIMIT :batch
    ) AS e
),
moved AS (
    UPDATE ordered_cursor c SET txid = last.txid, id = last.id
    FROM (SELECT txid, id FROM picked ORDER BY txid DESC, id DESC LIMIT 1) AS last
    WHERE c.queue_id = :queue_id
    RETURNING c.queue_id
),
lease AS (
    INSERT INTO ordered_lease (token, queue_id, ids, leased_until)
    SELECT nextval('lease_token_seq'), :queue_id, array_agg(id), now() + interval '30 seconds'
    FROM picked
    HAVING count(*) > 0
    RETURNING token
)
SELECT (SELECT token FROM lease) AS token, array_agg(p.payload) AS payloads,
       (SELECT count(*) FROM moved) AS moved
FROM picked p
\gset
-- 2. Complete the batch: one row, fenced by its token.
UPDATE ordered_lease SET done_at = now() WHERE token = :token AND done_at IS NULL;
