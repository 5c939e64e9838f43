-- pgbatch schema, version 4: the dequeue plan no longer depends on the hot table's statistics.
--
-- A queue's hot table swings from empty to a large backlog within seconds, faster than
-- (auto)analyze follows; where autovacuum is off, or before its first visit to a new table,
-- there are no statistics at all. The planner then guesses that a queue has a few hundred
-- visible rows (0.5 % of the table for queue_id = $1, a third of those visible), and for a
-- batch larger than that guess a bitmap scan of every visible row plus a sort looks cheaper
-- than walking the dequeue index. Measured on a 100,000-message backlog: 57-90 ms for a
-- dequeue of 1,000 that way (the sort spilled to disk), 11 ms along the index (1.5 ms of it
-- choosing the candidates, the rest leasing them).
--
-- So the candidates are chosen in a function planned with enable_sort off: the only way to
-- their order is then the dequeue index, whatever the statistics say. PL/pgSQL keeps the plan
-- for the session; the setting applies inside the function only, never to the caller's SQL.
--
-- One difference from a single statement: the function's query takes a snapshot of its own,
-- a moment after the dequeue's. A message committed in that moment may be chosen and locked
-- but, unseen by the dequeue's update, neither leased nor returned: the batch comes back
-- that much shorter and the message stays visible, locked only until the dequeue's
-- transaction ends (at once, unless a caller runs it inside a transaction of its own).
-- Running the whole dequeue inside the function avoids that, but drained 10 % slower at
-- batch 100 in alternating runs (every row copied through RETURN QUERY).
--
-- ROWS 10: the dequeue joins the candidates back to the table by id, and with the default
-- guess of 1,000 rows (with statistics or without) it hashed a sequential scan of the whole
-- table instead of looking each id up in the primary key (the soak's first tenth ran at
-- 0.56 and 0.76 of the old statement's rate that way).
CREATE FUNCTION message_dequeue_candidates(target_queue integer, batch_size integer)
RETURNS TABLE (id bigint, exhausted boolean, after_expired_lease boolean)
LANGUAGE plpgsql
ROWS 10
SET enable_sort = off
SET search_path FROM CURRENT
AS $$
#variable_conflict use_column
BEGIN
    -- A visible message that still carries a lease token lost its last lease unsettled: its
    -- consumer may have crashed on it. A paused queue hands out nothing.
    RETURN QUERY
    SELECT m.id, m.attempts >= q.max_attempts, m.lease_token IS NOT NULL
    FROM message m
    JOIN queue q ON q.id = target_queue AND NOT q.paused
    WHERE m.queue_id = target_queue AND m.visible_at <= now()
    ORDER BY m.priority DESC, m.visible_at
    LIMIT batch_size
    FOR UPDATE OF m SKIP LOCKED;
END
$$;
