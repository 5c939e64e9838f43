-- pgbatch schema, version 6: the packs' functions closed to everyone but their callers.
--
-- The two functions of migration 0005 run as their owner (SECURITY DEFINER). Their
-- search_path was the schema alone, and PostgreSQL searches pg_temp before a path that
-- does not name it: a caller's temporary table called "message" or "message_pack" took the
-- real one's place, and its triggers ran as the owner. The migrator now sets the path to
-- the schema, then pg_temp, and FROM CURRENT records that. The other functions run as
-- their caller; they get the same path so that every function of the schema reads alike.
--
-- EXECUTE was PUBLIC's, as for every new function: a reader or a producer could lease
-- messages and read their payloads. Only the owner and the roles granted it by name
-- (pgbatch roles: the worker) may call them now.
--
-- Upgrade note: a deployment whose workers connect as a role that is neither the owner nor
-- a member of the worker role of `pgbatch roles` must grant EXECUTE on the two functions to
-- that role, or rerun `pgbatch roles`.
ALTER FUNCTION message_pack_unpack(bigint[], bigint[]) SET search_path FROM CURRENT;
ALTER FUNCTION message_pack_take(integer, integer, bigint, double precision, text, bigint[])
    SET search_path FROM CURRENT;
ALTER FUNCTION message_dequeue_candidates(integer, integer) SET search_path FROM CURRENT;
ALTER FUNCTION message_wake_workers() SET search_path FROM CURRENT;
ALTER FUNCTION archive_ensure_partitions(date, integer) SET search_path FROM CURRENT;

REVOKE EXECUTE ON FUNCTION message_pack_unpack(bigint[], bigint[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION
    message_pack_take(integer, integer, bigint, double precision, text, bigint[]) FROM PUBLIC;
