-- name: result_find_many
-- The outcomes of awaited messages: archived (with the handler's result as JSON text, parsed
-- only for ids someone awaits) or dead-lettered (with the last error). Dense runs of awaited
-- ids are read as id ranges, one index descent per run instead of one per id; isolated ids
-- by lookup. A range may also return rows of ids nobody awaits: the caller skips them.
-- The ids go through array(SELECT unnest(...)) so that the planner does not expand a long
-- constant array against every archive partition.
WITH span AS (
    SELECT low, high FROM unnest(%(lows)s::bigint[], %(highs)s::bigint[]) AS s(low, high)
)
SELECT a.id, false AS dead, a.result::text AS result, NULL::text AS last_error
FROM span s JOIN {schema}.archive a ON a.id BETWEEN s.low AND s.high
UNION ALL
SELECT a.id, false, a.result::text, NULL
FROM {schema}.archive a
WHERE a.id = ANY(array(SELECT unnest(%(ids)s::bigint[])))
UNION ALL
SELECT d.id, true, NULL, d.last_error
FROM span s JOIN {schema}.dead_letter d ON d.id BETWEEN s.low AND s.high
UNION ALL
SELECT d.id, true, NULL, d.last_error
FROM {schema}.dead_letter d
WHERE d.id = ANY(array(SELECT unnest(%(ids)s::bigint[])));


-- name: queue_await_results
-- Producers awaiting results say so: archives of these queues notify until the time given.
UPDATE {schema}.queue
SET results_awaited_until = now() + make_interval(secs => %(seconds)s)
WHERE name = ANY(%(names)s::text[]);
