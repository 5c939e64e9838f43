-- pgbatch schema, version 5: plain messages travel in packs.
--
-- Leasing a message writes a new version of its row; at batch 100 that write per message is
-- what bounds a drain (docs/packs.md: the lease-then-archive loop in pgbench
-- ran 6.7-9.7 times faster on rows of 100 messages, 3.0-3.8 times with the archive still a
-- row per message). So a plain batch_enqueue (priority 0, no delay, no dedup key, more than
-- pgbatch.operations.COPY_THRESHOLD messages: the COPY path) stores its
-- messages in packs: one row of up to pgbatch.operations.PACK_SIZE messages, their ids and
-- their payloads as one JSON array in the same order. A pack is leased and archived whole.
--
-- A pack leaves this path by being unpacked: its messages are moved into "message" with the
-- pack's lease unchanged (same token, attempts and expiry), and from there every
-- per-message statement applies as before. A consumer unpacks before it fails, buries,
-- extends, releases or renews messages of a pack, or archives only part of one. A pack whose
-- lease expired is leased again whole, its messages marked as crash suspects, or
-- dead-lettered past max_attempts (message_pack_take).
--
-- Upgrade note: upgrade the workers before the producers. A worker of version 4 does not
-- see packs.
--
-- The two functions run as their owner (SECURITY DEFINER): they move messages into
-- "message", which a worker role may not insert into (it cannot enqueue), and they move
-- them with their lease unchanged, which gives a caller nothing it could not do already.
CREATE TABLE message_pack (
    id          bigint PRIMARY KEY,  -- the first message's id
    queue_id    integer NOT NULL,
    visible_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    lease_token bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    ids         bigint[] NOT NULL,
    payloads    jsonb NOT NULL,
    CHECK (cardinality(ids) > 0)
) WITH (
    fillfactor = 80,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);

-- No statistics on the arrays: no statement filters on them, and ANALYZE (which autovacuum
-- runs often on a table that churns) would read every element of thousands of packs.
ALTER TABLE message_pack ALTER COLUMN ids SET STATISTICS 0,
                         ALTER COLUMN payloads SET STATISTICS 0;

-- id too: packs of one COPY share their visible_at, and id keeps them (and the two halves
-- of a split pack) in the order of their messages.
CREATE INDEX message_pack_dequeue_idx ON message_pack (queue_id, visible_at, id);

CREATE TRIGGER message_pack_wake_workers
AFTER INSERT ON message_pack
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION message_wake_workers();

-- Moves the packs held under one of the given tokens into "message", their lease unchanged;
-- returns how many messages moved. A pack leased again meanwhile (under a token not given)
-- is left alone. Unpacking never changes a lease, so a pack unpacked by a caller that no
-- longer holds it loses nothing: its holder's statements find its messages in "message".
CREATE FUNCTION message_pack_unpack(pack_ids bigint[], tokens bigint[]) RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path FROM CURRENT
AS $$
    WITH gone AS (
        DELETE FROM message_pack p
        WHERE p.id = ANY (pack_ids) AND p.lease_token = ANY (tokens)
        RETURNING p.queue_id, p.visible_at, p.attempts, p.lease_token, p.enqueued_at, p.ids,
                  p.payloads
    ),
    moved AS (
        INSERT INTO message (id, queue_id, visible_at, attempts, lease_token, enqueued_at,
                             payload)
        SELECT e.id, g.queue_id, g.visible_at, g.attempts, g.lease_token, g.enqueued_at,
               e.payload
        FROM gone g
        CROSS JOIN LATERAL ROWS FROM (unnest(g.ids), jsonb_array_elements(g.payloads))
            AS e(id, payload)
        RETURNING 1
    )
    SELECT count(*)::integer FROM moved;
$$;

-- Leases packs of a queue, oldest first, until wanted messages are taken; returns a row per
-- pack in the shape of message_dequeue_many's rows for messages, with the pack's id as id
-- and as pack_id, its payloads (one JSON array) as payload, and its message ids last: one
-- row instead of a hundred is less to send and to decode (the client splits it). Called by
-- message_dequeue_many with the room its batch has left after the per-message path.
--
-- A ready pack that still carries a lease token lost its lease unsettled: its consumer may
-- have crashed on it. After the final attempt its messages go to dead_letter (producers
-- awaiting results are notified, as by message_dequeue_many); otherwise it is leased again,
-- its messages marked after_expired_lease (the worker runs such crash suspects one by one,
-- and settling them one by one unpacks the pack). A pack larger than the room left is
-- split in two packs. Room left after the packs goes to messages stored alone that the
-- dequeue's candidates left behind them (chosen: the ids those candidates took).
-- Planned with enable_sort off for the reason migration 0004 gives.
CREATE FUNCTION message_pack_take(
    target_queue integer, wanted integer, token bigint, lease_seconds double precision,
    done_channel text, chosen bigint[]
)
RETURNS TABLE (id bigint, payload jsonb, attempts integer, enqueued_at timestamptz,
               visible_at timestamptz, lease_token bigint, priority smallint,
               last_error text, after_expired_lease boolean, pack_id bigint, ids bigint[])
LANGUAGE plpgsql
SECURITY DEFINER
SET enable_sort = off
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    taken integer := 0;
    room integer;
    pack record;
    settings record;
    buried boolean := false;
    -- Where the walk of the index has got to: the packs leased (or buried) so far keep
    -- their old index entries until this transaction ends, and a walk from the start each
    -- time would step over all of them again.
    after_visible timestamptz := '-infinity';
    after_id bigint := 0;
BEGIN
    IF wanted <= 0 THEN
        RETURN;
    END IF;
    SELECT q.name, q.max_attempts, q.results_awaited_until > now() AS awaited INTO settings
    FROM queue q WHERE q.id = target_queue AND NOT q.paused;
    IF NOT FOUND THEN
        RETURN;  -- a paused queue hands out nothing
    END IF;
    LOOP
        -- One pack at a time: a FOR loop over the query would fetch (and lock) ten ahead.
        SELECT p.id, p.visible_at, cardinality(p.ids) AS size,
               p.lease_token IS NOT NULL AS expired,
               p.attempts >= settings.max_attempts AS exhausted
        INTO pack
        FROM message_pack p
        WHERE p.queue_id = target_queue AND p.visible_at <= now()
          AND (p.visible_at, p.id) > (after_visible, after_id)
        ORDER BY p.visible_at, p.id
        LIMIT 1
        FOR UPDATE SKIP LOCKED;
        EXIT WHEN NOT FOUND;
        after_visible := pack.visible_at;
        after_id := pack.id;
        IF pack.expired AND pack.exhausted THEN
            WITH gone AS (
                DELETE FROM message_pack p WHERE p.id = pack.id
                RETURNING p.queue_id, p.attempts, p.enqueued_at, p.ids, p.payloads
            )
            INSERT INTO dead_letter (id, queue_id, priority, attempts, enqueued_at, last_error,
                                     payload)
            SELECT e.id, g.queue_id, 0, g.attempts, g.enqueued_at,
                   'lease expired after the final attempt', e.payload
            FROM gone g
            CROSS JOIN LATERAL ROWS FROM (unnest(g.ids), jsonb_array_elements(g.payloads))
                AS e(id, payload);
            buried := true;
            CONTINUE;
        END IF;
        room := wanted - taken;
        IF pack.size > room THEN
            -- Split: the first messages become a pack of their own, leased below under the
            -- pack's id (its first message's); the rest stays a pack in the same place in the
            -- order, with the same attempts and lease state, under its own first id. Both stay
            -- in this table, where the next statement of this function sees them: messages
            -- moved to "message" would be invisible to the dequeue statement calling this
            -- function (an older snapshot), and lost to its batch.
            WITH rest AS (
                UPDATE message_pack p
                SET id = p.ids[room + 1],
                    ids = p.ids[room + 1:],
                    payloads = (SELECT jsonb_agg(e.payload ORDER BY e.position)
                                FROM jsonb_array_elements(p.payloads) WITH ORDINALITY
                                    AS e(payload, position)
                                WHERE e.position > room)
                FROM (SELECT o.ids, o.payloads FROM message_pack o WHERE o.id = pack.id) AS old
                WHERE p.id = pack.id
                RETURNING p.queue_id, p.visible_at, p.attempts, p.lease_token, p.enqueued_at,
                          old.ids AS all_ids, old.payloads AS all_payloads
            )
            INSERT INTO message_pack (id, queue_id, visible_at, attempts, lease_token,
                                      enqueued_at, ids, payloads)
            SELECT pack.id, r.queue_id, r.visible_at, r.attempts, r.lease_token, r.enqueued_at,
                   r.all_ids[1:room],
                   (SELECT jsonb_agg(e.payload ORDER BY e.position)
                    FROM jsonb_array_elements(r.all_payloads) WITH ORDINALITY
                        AS e(payload, position)
                    WHERE e.position <= room)
            FROM rest r;
        END IF;
        RETURN QUERY
        UPDATE message_pack p
        SET visible_at = now() + make_interval(secs => lease_seconds),
            attempts = p.attempts + 1,
            lease_token = token
        WHERE p.id = pack.id
        RETURNING p.id, p.payloads, p.attempts, p.enqueued_at, p.visible_at, p.lease_token,
                  0::smallint, NULL::text, pack.expired, p.id, p.ids;
        taken := taken + least(pack.size, room);
        EXIT WHEN taken >= wanted;
    END LOOP;
    IF taken < wanted THEN
        -- Room left once the packs are taken: the messages stored alone that the dequeue's
        -- candidates left behind the packs (priority 0 visible after the oldest ready pack,
        -- or a lower priority), so that a batch is not short while messages are ready. Not
        -- those the dequeue chose itself, nor any past its final attempt (the next dequeue
        -- dead-letters those).
        RETURN QUERY
        WITH tail AS (
            SELECT m.id, m.lease_token IS NOT NULL AS suspect
            FROM message m
            WHERE m.queue_id = target_queue AND m.priority <= 0 AND m.visible_at <= now()
              AND m.attempts < settings.max_attempts AND m.id <> ALL (chosen)
            ORDER BY m.priority DESC, m.visible_at
            LIMIT wanted - taken
            FOR UPDATE SKIP LOCKED
        )
        UPDATE message m
        SET visible_at = now() + make_interval(secs => lease_seconds),
            attempts = m.attempts + 1,
            lease_token = token
        FROM tail t
        WHERE m.id = t.id
        RETURNING m.id, m.payload, m.attempts, m.enqueued_at, m.visible_at, m.lease_token,
                  m.priority, m.last_error, t.suspect, NULL::bigint, NULL::bigint[];
    END IF;
    IF buried AND settings.awaited THEN
        -- The same notification as message_dequeue_many's: delivered once per transaction.
        PERFORM pg_notify(done_channel, settings.name);
    END IF;
END
$$;

-- The per-message candidates, now beside packs. The order stays: highest priority first,
-- then earliest visible. Packs hold priority 0, so a dequeue takes, in this order: messages
-- of a higher priority; messages of priority 0 visible no later than the oldest ready pack
-- (message_pack_take then fills the batch with packs, and what room is left with the
-- messages left behind them); and only once no pack is ready, messages of a lower priority. Three index ranges, each bounded by the room left: one
-- statement with a filter instead would walk every younger message of priority 0 while a
-- pack is ready.
CREATE OR REPLACE FUNCTION message_dequeue_candidates(target_queue integer, batch_size integer)
RETURNS TABLE (id bigint, exhausted boolean, after_expired_lease boolean)
LANGUAGE plpgsql
ROWS 10
SET enable_sort = off
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
DECLARE
    final_attempt integer;
    oldest_pack timestamptz;
    room integer := batch_size;
    taken integer;
BEGIN
    SELECT q.max_attempts INTO final_attempt
    FROM queue q WHERE q.id = target_queue AND NOT q.paused;
    IF NOT FOUND THEN
        RETURN;  -- a paused queue hands out nothing
    END IF;
    SELECT p.visible_at INTO oldest_pack
    FROM message_pack p
    WHERE p.queue_id = target_queue AND p.visible_at <= now()
    ORDER BY p.visible_at
    LIMIT 1;
    -- A visible message that still carries a lease token lost its last lease unsettled: its
    -- consumer may have crashed on it.
    RETURN QUERY
    SELECT m.id, m.attempts >= final_attempt, m.lease_token IS NOT NULL
    FROM message m
    WHERE m.queue_id = target_queue AND m.priority > 0 AND m.visible_at <= now()
    ORDER BY m.priority DESC, m.visible_at
    LIMIT room
    FOR UPDATE OF m SKIP LOCKED;
    GET DIAGNOSTICS taken = ROW_COUNT;
    room := room - taken;
    IF room <= 0 THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT m.id, m.attempts >= final_attempt, m.lease_token IS NOT NULL
    FROM message m
    WHERE m.queue_id = target_queue AND m.priority = 0
      AND m.visible_at <= least(now(), coalesce(oldest_pack, 'infinity'))
    ORDER BY m.priority DESC, m.visible_at
    LIMIT room
    FOR UPDATE OF m SKIP LOCKED;
    GET DIAGNOSTICS taken = ROW_COUNT;
    room := room - taken;
    IF room <= 0 OR oldest_pack IS NOT NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT m.id, m.attempts >= final_attempt, m.lease_token IS NOT NULL
    FROM message m
    WHERE m.queue_id = target_queue AND m.priority < 0 AND m.visible_at <= now()
    ORDER BY m.priority DESC, m.visible_at
    LIMIT room
    FOR UPDATE OF m SKIP LOCKED;
END
$$;
