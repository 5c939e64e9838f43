-- pgbatch schema, version 7: a pack is checked whole when it is written.
--
-- Producers INSERT packs themselves (COPY, migration 0005). A pack whose payloads are not a
-- JSON array of one payload per id made every dequeue that reached it fail (it is the
-- oldest, so every dequeue of the queue), and dead-lettering it failed the same way: one
-- bad row stalled a queue for good. A row that breaks the rule is now refused at its
-- INSERT, in the producer's own transaction, instead.
--
-- Cost: the check reads the payloads' array header, so an UPDATE of a pack (its lease)
-- decompresses them: 3-6 µs per pack of 100 small messages measured here, against about
-- 8.5 µs of server CPU per message for the whole drain. A pack's INSERT costs no more.
-- Adding it reads every pack already stored; one that breaks the rule fails the migration.
ALTER TABLE message_pack ADD CONSTRAINT message_pack_whole CHECK (coalesce(
    array_ndims(ids) = 1
    AND array_lower(ids, 1) = 1  -- the splits cut by position from 1, as the payloads count
    AND id = ids[1]
    AND array_position(ids, NULL) IS NULL
    AND jsonb_typeof(payloads) = 'array'
    AND jsonb_array_length(payloads) = cardinality(ids),
    false
));
