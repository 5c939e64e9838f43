-- pgbench script, limit (a) and (c): insert :rows messages in one transaction, as pgbatch's
-- enqueue does: ids from the queue's sequence, payloads parsed from JSON text into jsonb.
INSERT INTO message (id, queue_id, payload)
SELECT n, :queue_id, ('{"user_id":' || n || ',"email":"u' || n || '@example.com"}')::jsonb
FROM (SELECT nextval('message_id_seq') AS n FROM generate_series(1, :rows::int)) AS ids;
