-- name: dead_letter_list
SELECT id, payload, attempts, last_error, enqueued_at, died_at, priority
FROM {schema}.dead_letter
WHERE queue_id = %(queue_id)s
ORDER BY id
LIMIT %(limit)s;

-- name: dead_letter_requeue
-- Back into the queue as fresh messages (attempts reset), visible at once. ids NULL: all.
WITH revived AS (
    DELETE FROM {schema}.dead_letter
    WHERE queue_id = %(queue_id)s
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
    RETURNING id, queue_id, priority, enqueued_at, dedup_key, payload
),
inserted AS (
    INSERT INTO {schema}.message (id, queue_id, priority, visible_at, attempts, enqueued_at,
                         dedup_key, payload)
    -- A live message may have taken the dedup key meanwhile: the revived one then goes without.
    SELECT r.id, r.queue_id, r.priority, now(), 0, r.enqueued_at,
           CASE WHEN EXISTS (SELECT 1 FROM {schema}.message m
                             WHERE m.queue_id = r.queue_id AND m.dedup_key = r.dedup_key)
                THEN NULL ELSE r.dedup_key END,
           r.payload
    FROM revived r
    RETURNING id
)
SELECT count(*) FROM inserted;

-- name: dead_letter_purge
WITH gone AS (DELETE FROM {schema}.dead_letter WHERE queue_id = %(queue_id)s RETURNING 1)
SELECT count(*) FROM gone;
