-- name: message_renew_leases
-- The worker's lease renewal: one statement for every in-flight batch, each message with the
-- lease length of its queue. Fenced by lease token: a lost lease is not renewed. Held
-- messages are found as in message_archive_many; "held" carries [[tokens], lease seconds].
WITH given AS (SELECT %(held)s::jsonb AS held)
UPDATE {schema}.message m
SET visible_at = now() + make_interval(secs => (g.held -> m.id::text ->> 1)::double precision)
FROM given g
WHERE m.id = ANY (%(ids)b::bigint[])
  AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
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
        WHERE m.queue_id = q.id AND m.visible_at <= now())
       + (SELECT coalesce(sum(cardinality(p.ids)), 0) FROM {schema}.message_pack p
          WHERE p.queue_id = q.id AND p.visible_at <= now()) AS ready
FROM {schema}.queue q
WHERE q.name = ANY(%(names)s::text[]);
