-- name: message_renew_leases
-- The worker's lease renewal: one statement for every in-flight batch, each message with the
-- lease length of its queue. Fenced by lease token: a lost lease is not renewed.
UPDATE {schema}.message m
SET visible_at = now() + make_interval(secs => a.lease_seconds)
FROM unnest(%(ids)b::bigint[], %(tokens)b::bigint[], %(lease_seconds)s::double precision[])
     AS a(id, token, lease_seconds)
WHERE m.id = a.id AND m.lease_token = a.token
RETURNING m.id;

-- name: worker_heartbeat
-- Registers the worker process on its first beat, then keeps its row alive with its totals
-- (a row deleted by a cleanup comes back).
INSERT INTO {schema}.worker (id, host, pid, queues, batches_done, messages_done)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s::text[], %(batches_done)s, %(messages_done)s)
ON CONFLICT (id) DO UPDATE
SET heartbeat_at = now(),
    batches_done = excluded.batches_done,
    messages_done = excluded.messages_done;

-- name: worker_stop
UPDATE {schema}.worker
SET stopped_at = now(), heartbeat_at = now(),
    batches_done = %(batches_done)s, messages_done = %(messages_done)s
WHERE id = %(id)s;

-- name: queue_depth_many
-- Visible messages per queue, for the queue depth gauge.
SELECT q.name,
       (SELECT count(*) FROM {schema}.message m
        WHERE m.queue_id = q.id AND m.visible_at <= now()) AS ready
FROM {schema}.queue q
WHERE q.name = ANY(%(names)s::text[]);
