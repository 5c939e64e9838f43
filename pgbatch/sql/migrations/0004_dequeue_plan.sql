-- pgbatch schema, version 4: the dequeue plan no longer depends on the hot table's statistics.
--
-- A queue's hot table swings from empty to a large backlog within seconds, faster than
-- (auto)analyze follows; where autovacuum is off, or before its first visit to a new table,
-- there are no statistics at all. The planner then guesses that a queue has a few hundred
-- visible rows (0.5 % of the table for queue_id = $1, a third of those visible), and for a
-- batch larger than that guess a bitmap scan of every visible row plus a sort looks cheaper
-- than walking the dequeue index. Measured on a 100,000-message backlog: 55-90 ms per batch
-- of 1,000 that way (the sort spilled to disk) against about 2 ms along the index.
--
-- So the candidates are chosen in a function planned with enable_sort off: the only way to
-- their order is then the dequeue index, whatever the statistics say. PL/pgSQL keeps the plan
-- for the session; the setting applies inside the function only, never to the caller's SQL.
-- ROWS 10: the dequeue joins the candidates back to the table by id, and with the default
-- guess of 1,000 rows (and no statistics) it hashed a sequential scan of the whole table
-- instead of looking each id up in the primary key (the first tenth of the soak ran at half
-- speed that way).
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
