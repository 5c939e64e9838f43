-- pgbench script, claim-horizon scenario: a producer writing :rows events per transaction into
-- limit (e)'s message log (ordered_layout_create in helpers.sql).
INSERT INTO ordered_event (id, queue_id, payload)
SELECT nextval('message_id_seq'), :queue_id,
       jsonb_build_object('user_id', n, 'email', 'u' || n || '@example.com')
FROM generate_series(1, :rows) AS n;
