-- name: role_list
-- The roles among the given names that exist, and whether each could log in or is a superuser.
SELECT rolname, rolcanlogin, rolsuper
FROM pg_catalog.pg_roles
WHERE rolname = ANY(%(names)s::text[]);

-- name: role_schema_relations
-- Tables (partitions included) and sequences of a schema, for a change of owner. Sequences
-- that belong to a column (identity, serial) follow their table and are left out.
SELECT c.relname, c.relkind = 'S' AS is_sequence
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s
  AND c.relkind IN ('r', 'p', 'S')
  AND NOT EXISTS (
      SELECT 1 FROM pg_catalog.pg_depend d
      WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.objid = c.oid
        AND c.relkind = 'S' AND d.deptype IN ('a', 'i')
  )
ORDER BY c.relname;

-- name: role_schema_functions
-- Functions and procedures of a schema as PostgreSQL's own quoted signature
-- (schema.name(argtypes)), the only form ALTER ROUTINE accepts.
SELECT p.oid::regprocedure::text
FROM pg_catalog.pg_proc p
JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = %(schema)s
ORDER BY 1;

-- name: role_table_columns
-- The columns of a table of a schema, in order, except those named in excluded.
SELECT a.attname
FROM pg_catalog.pg_attribute a
JOIN pg_catalog.pg_class c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = %(table)s
  AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attname <> ALL(%(excluded)s::text[])
ORDER BY a.attnum;
