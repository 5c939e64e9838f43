-- pgbatch schema, version 3: a batch_enqueue of plain messages is one COPY statement.
--
-- 1. Ids in blocks. One nextval now reserves 1,000 consecutive ids (pgbatch.ids.ID_BLOCK),
--    so producers draw ids once per several batches instead of once per message. Ids stay
--    unique and never ordered by anything but their block; nothing orders messages by id.
--    Upgrade note: producers of version 2 (one nextval per message) must be stopped before
--    this runs, or their ids could fall inside a block reserved by a newer producer.
ALTER SEQUENCE message_id_seq INCREMENT BY 1000;

-- 2. Workers are woken by the insert itself: one NOTIFY per statement and queue, from a
--    statement-level trigger (no per-row trigger: COPY rows stay trigger-free). The client
--    no longer sends a NOTIFY statement of its own, so a plain enqueue needs no explicit
--    transaction: a COPY alone is all-or-nothing. The channel is pgbatch.client.wake_channel;
--    NOTIFY is transactional, so an enqueue inside a caller's transaction wakes nobody until
--    it commits, and a rolled-back one never does.
CREATE FUNCTION message_wake_workers() RETURNS trigger
LANGUAGE plpgsql
SET search_path FROM CURRENT
AS $$
BEGIN
    PERFORM pg_notify('pgbatch_' || TG_TABLE_SCHEMA, q.name)
    FROM queue q
    WHERE q.id IN (SELECT DISTINCT queue_id FROM inserted);
    RETURN NULL;
END
$$;

CREATE TRIGGER message_wake_workers
AFTER INSERT ON message
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION message_wake_workers();
