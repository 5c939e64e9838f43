-- name: worker_list_recent
-- Worker processes seen within recent_seconds (live ones always are): heartbeat age by the
-- database clock, so a worker on a host with a skewed clock is judged fairly.
SELECT id, host, pid, queues, started_at, heartbeat_at, stopped_at, batches_done,
       messages_done,
       extract(epoch FROM now() - heartbeat_at)::double precision AS heartbeat_age
FROM {schema}.worker
WHERE greatest(heartbeat_at, coalesce(stopped_at, heartbeat_at))
      > now() - make_interval(secs => %(recent_seconds)s)
ORDER BY stopped_at IS NOT NULL, started_at DESC, id;
