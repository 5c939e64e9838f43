-- pgbench script, limit (f): limit (e) with an archive row per message at completion, what
-- the batch-lease layout would cost if per-message archive rows stayed (for results, or for
-- an archive kept apart from the message log). A claim is a contiguous range of the
-- (txid, id) order (consumers take turns on the cursor, and nothing can commit inside a
-- range below xmin), so completion copies the range by primary key.
-- 1. Claim as in limit (e); the range's two ends come back with the payloads.
WITH cursor_now AS (
    SELECT txid, id FROM ordered_cursor WHERE queue_id = :queue_id FOR UPDATE
),
picked AS (
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
last AS (SELECT txid, id FROM picked ORDER BY txid DESC, id DESC LIMIT 1),
first AS (SELECT txid, id FROM picked ORDER BY txid, id LIMIT 1),
moved AS (
    UPDATE ordered_cursor c SET txid = last.txid, id = last.id
    FROM last
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
       (SELECT count(*) FROM moved) AS moved,
       (SELECT txid FROM first) AS first_txid, (SELECT id FROM first) AS first_id,
       (SELECT txid FROM last) AS last_txid, (SELECT id FROM last) AS last_id
FROM picked p
\gset
-- 2. Complete the batch (one row, fenced by its token) and archive its messages.
WITH done AS (
    UPDATE ordered_lease SET done_at = now()
    WHERE token = :token AND done_at IS NULL
    RETURNING token
)
INSERT INTO archive (id, queue_id, priority, attempts, enqueued_at, payload)
SELECT e.id, e.queue_id, 0, 1, e.enqueued_at, e.payload
FROM ordered_event e
WHERE EXISTS (SELECT 1 FROM done)
  AND e.queue_id = :queue_id
  AND (e.txid, e.id) >= (:first_txid::xid8, :first_id)
  AND (e.txid, e.id) <= (:last_txid::xid8, :last_id);
