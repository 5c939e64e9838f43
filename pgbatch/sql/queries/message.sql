-- name: message_id_blocks
-- Reserves blocks of ids (each nextval is the first of pgbatch.ids.ID_BLOCK ids, see
-- migration 0003), drawn ahead of COPY so batch_enqueue returns ids in input order.
SELECT array(SELECT nextval({message_id_seq}) FROM generate_series(1, %(count)s));

-- name: message_pack_copy
-- Plain messages in packs (migration 0005): each row the pack's ids and its payloads as one
-- JSON array, the first id as the pack's.
COPY {schema}.message_pack (id, queue_id, ids, payloads) FROM STDIN;

-- name: message_insert_many
-- The general enqueue path (delay, priority, dedup keys). Payloads arrive as JSON text.
-- A dedup key that matches a message still in the queue writes nothing: ON CONFLICT skips it.
INSERT INTO {schema}.message (id, queue_id, priority, visible_at, dedup_key, payload)
SELECT a.id, %(queue_id)s, %(priority)s, now() + make_interval(secs => %(delay_seconds)s),
       a.dedup_key, a.payload::jsonb
FROM unnest(%(ids)s::bigint[], %(dedup_keys)s::text[], %(payloads)s::text[])
     AS a(id, dedup_key, payload)
ON CONFLICT (queue_id, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING id;

-- name: message_find_by_dedup_keys
SELECT dedup_key, id FROM {schema}.message
WHERE queue_id = %(queue_id)s AND dedup_key = ANY(%(dedup_keys)s::text[]);

-- name: message_dequeue_many
-- Takes up to limit visible messages with FOR UPDATE SKIP LOCKED, highest priority first,
-- then earliest visible. Attempts are counted here, at delivery, so a handler that kills its
-- process still reaches the dead letters: a candidate whose earlier lease expired after its
-- final attempt goes to dead_letter instead of being handed out again.
WITH chosen AS (
    -- Chosen along the dequeue index whatever the table's statistics (migration 0004), and
    -- handed on as arrays of ids rather than joined back: a join's plan follows the table's
    -- statistics, and after a vacuum of an emptied queue they say "empty" while a burst
    -- fills it (the planner then walked the whole primary key once per candidate: seconds
    -- per dequeue). "id = ANY(array)" is a primary-key lookup per id, whatever they say.
    SELECT coalesce(array_agg(c.id) FILTER (WHERE NOT c.exhausted), '{{}}') AS live,
           coalesce(array_agg(c.id) FILTER (WHERE c.exhausted), '{{}}') AS exhausted,
           coalesce(array_agg(c.id) FILTER (WHERE c.after_expired_lease AND NOT c.exhausted),
                    '{{}}') AS suspects
    FROM {schema}.message_dequeue_candidates(%(queue_id)s::integer, %(limit)s::integer) AS c
),
exhausted AS (
    DELETE FROM {schema}.message m
    WHERE m.id = ANY ((SELECT exhausted FROM chosen)::bigint[])
    RETURNING m.id, m.queue_id, m.priority, m.attempts, m.enqueued_at, m.dedup_key,
              m.last_error, m.payload
),
buried AS (
    INSERT INTO {schema}.dead_letter (id, queue_id, priority, attempts, enqueued_at, dedup_key,
                             last_error, payload)
    SELECT id, queue_id, priority, attempts, enqueued_at, dedup_key,
           coalesce(last_error, 'lease expired after the final attempt'), payload
    FROM exhausted
    RETURNING id
),
-- Producers awaiting a result learn of these dead letters too, as of every other: one
-- notification per statement that buried any, only while results of the queue are awaited.
notified AS (
    SELECT count(pg_notify(%(done_channel)s, q.name))
    FROM {schema}.queue q
    WHERE q.id = %(queue_id)s AND q.results_awaited_until > now()
      AND EXISTS (SELECT 1 FROM buried)
),
token AS (SELECT nextval({lease_token_seq}) AS value),
leased AS (
    UPDATE {schema}.message m
    SET visible_at = now() + make_interval(secs => %(lease_seconds)s),
        attempts = m.attempts + 1,
        lease_token = token.value
    FROM token, notified  -- one row each: "notified" only makes the notification happen
    WHERE m.id = ANY ((SELECT live FROM chosen)::bigint[])
    RETURNING m.id, m.payload, m.attempts, m.enqueued_at, m.visible_at, m.lease_token,
              m.priority, m.last_error, m.id = ANY ((SELECT suspects FROM chosen)::bigint[]),
              NULL::bigint AS pack_id, NULL::bigint[] AS ids
)
SELECT * FROM leased
UNION ALL
-- Packs fill what room the batch has left, under the same lease token (migration 0005): a
-- row per pack, its message ids last (NULL on the rows of messages stored alone).
SELECT * FROM {schema}.message_pack_take(
    %(queue_id)s::integer,
    %(limit)s::integer - cardinality((SELECT live FROM chosen)),
    (SELECT value FROM token),
    %(lease_seconds)s::double precision,
    %(done_channel)s::text,
    (SELECT live || exhausted FROM chosen)::bigint[]
);

-- name: message_pack_unpack
-- Moves packs held under the given tokens into the message table, their lease unchanged,
-- before a per-message statement on their messages (migration 0005).
SELECT {schema}.message_pack_unpack(%(packs)s::bigint[], %(tokens)s::bigint[]);

-- name: message_pack_archive
-- Archives whole packs held under the given tokens (packs[i] under tokens[i], counts[i] of
-- its messages given): a row per message in the archive, with its result from "results" (a
-- JSON object of id -> result, or NULL). A pack whose count differs (a partial archive) is
-- left alone, for the caller to unpack. Returns the ids archived; notifies as
-- message_archive_many does.
WITH given AS (SELECT %(results)s::jsonb AS results),
done AS (
    DELETE FROM {schema}.message_pack p
    WHERE p.id = ANY (%(packs)s::bigint[])
      AND p.lease_token = (%(tokens)s::bigint[])[array_position(%(packs)s::bigint[], p.id)]
      AND cardinality(p.ids)
          = (%(counts)s::integer[])[array_position(%(packs)s::bigint[], p.id)]
    RETURNING p.queue_id, p.attempts, p.enqueued_at, p.ids, p.payloads
),
archived AS (
    INSERT INTO {schema}.archive (id, queue_id, priority, attempts, enqueued_at, payload, result)
    SELECT e.id, d.queue_id, 0, d.attempts, d.enqueued_at, e.payload,
           nullif(g.results -> e.id::text, 'null')
    FROM done d
    CROSS JOIN given g
    CROSS JOIN LATERAL ROWS FROM (unnest(d.ids), jsonb_array_elements(d.payloads))
        AS e(id, payload)
    RETURNING id
)
SELECT a.id
FROM archived a,
     (SELECT count(pg_notify(%(done_channel)s, %(queue)s))
      FROM (SELECT 1 FROM archived LIMIT 1) AS any_archived
      WHERE EXISTS (SELECT 1 FROM {schema}.queue
                    WHERE name = %(queue)s AND results_awaited_until > now())) AS notified;

-- name: message_archive_many
-- Moves the messages whose lease the caller still holds (fenced by lease token) into the
-- archive, with their results; returns the ids archived.
--
-- The statements on held messages find them by "id = ANY(ids)" and read each one's lease
-- tokens (and result, error...) from "held", a JSON object of id -> [[tokens], extra] (an id
-- given twice, under two leases, carries both tokens).
-- Not by joining an unnest of arrays: a join's plan follows the hot table's statistics, and
-- after a vacuum of an emptied queue they say "empty" while a burst fills it; the planner
-- then walked the whole table once per message (archives of 250 took 0.3-1.1 s).
WITH given AS (SELECT %(held)s::jsonb AS held),
done AS (
    DELETE FROM {schema}.message m
    USING given g
    WHERE m.id = ANY (%(ids)b::bigint[])
      AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
    RETURNING m.id, m.queue_id, m.priority, m.attempts, m.enqueued_at, m.payload,
              nullif(g.held -> m.id::text -> 1, 'null') AS result
)
,
archived AS (
    INSERT INTO {schema}.archive (id, queue_id, priority, attempts, enqueued_at, payload, result)
    SELECT id, queue_id, priority, attempts, enqueued_at, payload, result FROM done
    RETURNING id
)
-- One notification per archived batch, not per message, and only while producers await
-- results of this queue (queue.results_awaited_until, kept fresh by pgbatch.results).
SELECT a.id
FROM archived a,
     (SELECT count(pg_notify(%(done_channel)s, %(queue)s))
      FROM (SELECT 1 FROM archived LIMIT 1) AS any_archived
      WHERE EXISTS (SELECT 1 FROM {schema}.queue
                    WHERE name = %(queue)s AND results_awaited_until > now())) AS notified;

-- name: message_archive_same_lease
-- message_archive_many's usual case: messages leased by one dequeue call (one lease token),
-- without results. A plain id list is cheaper to join than an unnest of three arrays.
WITH done AS (
    DELETE FROM {schema}.message m
    WHERE m.id = ANY (%(ids)b::bigint[]) AND m.lease_token = %(token)s
    RETURNING m.id, m.queue_id, m.priority, m.attempts, m.enqueued_at, m.payload
),
archived AS (
    INSERT INTO {schema}.archive (id, queue_id, priority, attempts, enqueued_at, payload)
    SELECT id, queue_id, priority, attempts, enqueued_at, payload FROM done
    RETURNING id
)
SELECT a.id
FROM archived a,
     (SELECT count(pg_notify(%(done_channel)s, %(queue)s))
      FROM (SELECT 1 FROM archived LIMIT 1) AS any_archived
      WHERE EXISTS (SELECT 1 FROM {schema}.queue
                    WHERE name = %(queue)s AND results_awaited_until > now())) AS notified;

-- name: message_fail_many
-- Fails the messages whose lease the caller still holds: back to the queue after a delay
-- (the given one, or exponential backoff with jitter), or to the dead letters once their
-- attempts reach max_attempts. Returns each id with its fate: 'retry' or 'dead'.
-- Held messages are found as in message_archive_many; "held" carries [[tokens], error]. No
-- join either: each message's queue settings come from a lookup by its queue's id, and the
-- two fates are two disjoint sets of held rows (attempts at or past max_attempts, or not).
WITH given AS (SELECT %(held)s::jsonb AS held),
dead AS (
    DELETE FROM {schema}.message m
    USING given g
    WHERE m.id = ANY (%(ids)b::bigint[])
      AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
      AND m.attempts >= (SELECT q.max_attempts FROM {schema}.queue q WHERE q.id = m.queue_id)
    RETURNING m.id, m.queue_id, m.priority, m.attempts, m.enqueued_at, m.dedup_key,
              g.held -> m.id::text ->> 1, m.payload
),
buried AS (
    INSERT INTO {schema}.dead_letter (id, queue_id, priority, attempts, enqueued_at, dedup_key,
                             last_error, payload)
    SELECT * FROM dead
    RETURNING id
),
retried AS (
    UPDATE {schema}.message m
    SET visible_at = now() + make_interval(secs => coalesce(
            %(delay_seconds)s::double precision,
            (SELECT least(q.backoff_max_seconds,
                          q.backoff_base_seconds * power(2, greatest(m.attempts - 1, 0)))
             FROM {schema}.queue q WHERE q.id = m.queue_id) * (0.5 + random() / 2))),
        lease_token = NULL,
        last_error = g.held -> m.id::text ->> 1
    FROM given g
    WHERE m.id = ANY (%(ids)b::bigint[])
      AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
      AND m.attempts < (SELECT q.max_attempts FROM {schema}.queue q WHERE q.id = m.queue_id)
    RETURNING m.id
)
SELECT id, 'dead' AS fate FROM buried
UNION ALL
SELECT id, 'retry' AS fate FROM retried
UNION ALL
-- Producers awaiting a result learn of dead letters too: one notification per call.
-- This branch always yields one (NULL, NULL) row, which the caller skips.
SELECT NULL, NULL
FROM (SELECT count(pg_notify(%(done_channel)s, %(queue)s))
      FROM (SELECT 1 FROM buried LIMIT 1) AS any_dead
      WHERE EXISTS (SELECT 1 FROM {schema}.queue
                    WHERE name = %(queue)s AND results_awaited_until > now())) AS notified;

-- name: message_bury_many
-- Dead-letters held messages at once (a payload that no longer fits the queue's model will
-- fail on every delivery), fenced by lease token; one notification for awaiting producers.
-- Held messages are found as in message_archive_many; "held" carries [[tokens], error].
WITH given AS (SELECT %(held)s::jsonb AS held),
dead AS (
    DELETE FROM {schema}.message m
    USING given g
    WHERE m.id = ANY (%(ids)b::bigint[])
      AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
    RETURNING m.id, m.queue_id, m.priority, m.attempts, m.enqueued_at, m.dedup_key,
              g.held -> m.id::text ->> 1, m.payload
),
buried AS (
    INSERT INTO {schema}.dead_letter (id, queue_id, priority, attempts, enqueued_at, dedup_key,
                                      last_error, payload)
    SELECT * FROM dead
    RETURNING id
)
SELECT b.id
FROM buried b,
     (SELECT count(pg_notify(%(done_channel)s, %(queue)s))
      FROM (SELECT 1 FROM buried LIMIT 1) AS any_dead
      WHERE EXISTS (SELECT 1 FROM {schema}.queue
                    WHERE name = %(queue)s AND results_awaited_until > now())) AS notified;

-- name: message_extend_lease_many
-- Held messages are found as in message_archive_many; "held" carries [[tokens]].
WITH given AS (SELECT %(held)s::jsonb AS held)
UPDATE {schema}.message m
SET visible_at = now() + make_interval(secs => %(lease_seconds)s)
FROM given g
WHERE m.id = ANY (%(ids)b::bigint[])
  AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
RETURNING m.id, m.visible_at;

-- name: message_release_many
-- Hands back messages that were taken but never started (worker shutdown): visible at once,
-- and the delivery does not count as an attempt.
-- Held messages are found as in message_archive_many; "held" carries [[tokens]].
WITH given AS (SELECT %(held)s::jsonb AS held)
UPDATE {schema}.message m
SET visible_at = now(), lease_token = NULL, attempts = greatest(m.attempts - 1, 0)
FROM given g
WHERE m.id = ANY (%(ids)b::bigint[])
  AND (g.held -> m.id::text -> 0) @> to_jsonb(m.lease_token)
RETURNING m.id;
