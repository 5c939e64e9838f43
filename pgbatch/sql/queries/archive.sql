-- name: archive_ensure_partitions
SELECT {schema}.archive_ensure_partitions(current_date - 1, %(days)s);
