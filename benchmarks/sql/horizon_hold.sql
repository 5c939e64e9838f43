-- pgbench script, claim-horizon scenario: a transaction that writes (so it has an xid, which
-- holds back the snapshot's xmin) and stays open :hold_ms ms, as a transactional batch
-- handler's does while it runs.
BEGIN;
INSERT INTO horizon_holder DEFAULT VALUES;
SELECT pg_sleep(:hold_ms::integer / 1000.0);
COMMIT;
