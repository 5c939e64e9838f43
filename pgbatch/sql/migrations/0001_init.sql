-- pgbatch schema, version 1.
-- Every object is created unqualified: the migrator sets search_path to the target schema
-- (default "pgbatch"), so one database can hold several independent pgbatch schemas.

CREATE TABLE queue (
    id                   integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                 text NOT NULL UNIQUE
                         CHECK (name ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,62}$'),
    lease_seconds        double precision NOT NULL DEFAULT 30 CHECK (lease_seconds > 0),
    max_attempts         integer NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    backoff_base_seconds double precision NOT NULL DEFAULT 1 CHECK (backoff_base_seconds >= 0),
    backoff_max_seconds  double precision NOT NULL DEFAULT 600 CHECK (backoff_max_seconds >= 0),
    max_payload_bytes    integer NOT NULL DEFAULT 1048576 CHECK (max_payload_bytes > 0),
    paused               boolean NOT NULL DEFAULT false,
    created_at           timestamptz NOT NULL DEFAULT now()
);

-- Ids are drawn by the producer before COPY so that batch_enqueue can return them in input order.
CREATE SEQUENCE message_id_seq AS bigint CACHE 1;
-- One token per dequeue call: the fence that stops a stale consumer from acting on a message.
CREATE SEQUENCE lease_token_seq AS bigint;

-- The hot table: only messages still in the queue (ready, delayed or leased).
-- visible_at serves both delay and lease: a message is handed out when visible_at <= now(),
-- and leasing pushes visible_at forward. So leased rows sit at the far end of the dequeue
-- index and a dequeue walks only visible entries, whatever the backlog of leased ones.
-- No foreign key to queue: a per-row FK check would cost every COPY row a trigger call.
CREATE TABLE message (
    id          bigint PRIMARY KEY,
    queue_id    integer NOT NULL,
    priority    smallint NOT NULL DEFAULT 0,
    visible_at  timestamptz NOT NULL DEFAULT now(),
    attempts    integer NOT NULL DEFAULT 0,
    lease_token bigint,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    dedup_key   text,
    last_error  text,
    payload     jsonb NOT NULL
) WITH (
    -- Room on each page for the updated versions that leasing and failing write.
    fillfactor = 80,
    -- Rows live seconds: vacuum early and without throttling so dead index entries do not
    -- pile up in front of the dequeue scan.
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0,
    autovacuum_analyze_scale_factor = 0.05
);

CREATE INDEX message_dequeue_idx ON message (queue_id, priority DESC, visible_at);
CREATE UNIQUE INDEX message_dedup_idx ON message (queue_id, dedup_key) WHERE dedup_key IS NOT NULL;

-- Processed messages, partitioned by day so retention drops whole partitions.
-- Rows land in the default partition only when no daily partition covers them yet.
CREATE TABLE archive (
    id          bigint NOT NULL,
    queue_id    integer NOT NULL,
    priority    smallint NOT NULL,
    attempts    integer NOT NULL,
    enqueued_at timestamptz NOT NULL,
    archived_at timestamptz NOT NULL DEFAULT now(),
    payload     jsonb NOT NULL,
    result      jsonb
) PARTITION BY RANGE (archived_at);

CREATE TABLE archive_default PARTITION OF archive DEFAULT;
-- Looking up one message's result; BRIN keeps the time index almost free to maintain.
CREATE INDEX archive_id_idx ON archive (id);
CREATE INDEX archive_archived_at_idx ON archive USING brin (archived_at);

CREATE TABLE dead_letter (
    id          bigint PRIMARY KEY,
    queue_id    integer NOT NULL,
    priority    smallint NOT NULL,
    attempts    integer NOT NULL,
    enqueued_at timestamptz NOT NULL,
    died_at     timestamptz NOT NULL DEFAULT now(),
    dedup_key   text,
    last_error  text,
    payload     jsonb NOT NULL
);
CREATE INDEX dead_letter_queue_idx ON dead_letter (queue_id, id);

-- Worker processes record themselves here; heartbeat_at tells the live from the dead.
CREATE TABLE worker (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    queues        text[] NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    batches_done  bigint NOT NULL DEFAULT 0,
    messages_done bigint NOT NULL DEFAULT 0
);

-- Creates the daily archive partitions from start_day for the given number of days.
-- A day whose rows already sit in the default partition is left there (creating its
-- partition would fail); retention prunes those by rows.
CREATE FUNCTION archive_ensure_partitions(start_day date, days integer) RETURNS integer
LANGUAGE plpgsql
-- Resolve the tables of this schema whatever the caller's search_path; days are UTC days
-- whatever the session's time zone, so sessions in different zones agree on the bounds.
SET search_path FROM CURRENT
SET TimeZone = 'UTC'
AS $$
DECLARE
    day date;
    part text;
    created integer := 0;
BEGIN
    FOR i IN 0 .. days - 1 LOOP
        day := start_day + i;
        part := 'archive_p' || to_char(day, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(quote_ident(current_schema()) || '.' || part) IS NOT NULL;
        CONTINUE WHEN EXISTS (
            SELECT 1 FROM archive_default
            WHERE archived_at >= day AND archived_at < day + 1
        );
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF archive FOR VALUES FROM (%L) TO (%L)',
            part, day::timestamptz, (day + 1)::timestamptz
        );
        created := created + 1;
    END LOOP;
    RETURN created;
END
$$;

SELECT archive_ensure_partitions(current_date - 1, 9);
