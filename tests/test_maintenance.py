"""Maintenance on a real PostgreSQL: archive retention by partition drop, partitions ahead,
and the health check (dead tuples, xmin horizon holders)."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import psycopg
import pytest
from psycopg import sql

import pgbatch
from pgbatch import errors
from pgbatch.maintenance import (
    archive_partitions,
    ensure_archive_partitions,
    health,
    prune_archive,
)


def run(client: pgbatch.Client, query: str, params: tuple[object, ...] = ()) -> list[tuple]:
    """Runs test-only SQL with {s} standing for the test's schema."""
    composed = sql.SQL(query).format(s=sql.Identifier(client.schema))
    with client.db.connection() as conn:
        cur = conn.execute(composed, params)
        return cur.fetchall() if cur.description else []


def partition_for_days_ago(client: pgbatch.Client, days: int) -> str:
    """Forges an old daily partition, as an archive that has run for a while has."""
    run(client, "SELECT {s}.archive_ensure_partitions(current_date - %s, 1)", (days,))
    [(name,)] = run(client, "SELECT 'archive_p' || to_char(current_date - %s, 'YYYYMMDD')", (days,))
    return str(name)


def forge_archived(
    client: pgbatch.Client, queue_id: int, count: int, when_sql: str, first_id: int
) -> None:
    """Archived rows at ``when_sql`` (an SQL expression of the row number i), in one INSERT."""
    run(
        client,
        "INSERT INTO {s}.archive (id, queue_id, priority, attempts, enqueued_at, archived_at,"
        " payload) SELECT %s + i, %s, 0, 1, now(), " + when_sql + ", '{{\"i\": 1}}'::jsonb"
        " FROM generate_series(1, %s) AS i",
        (first_id, queue_id, count),
    )


def archived_count(client: pgbatch.Client, queue_id: int | None = None) -> int:
    if queue_id is None:
        [(n,)] = run(client, "SELECT count(*) FROM {s}.archive")
    else:
        [(n,)] = run(client, "SELECT count(*) FROM {s}.archive WHERE queue_id = %s", (queue_id,))
    return int(n)


def relation_exists(client: pgbatch.Client, name: str) -> bool:
    [(found,)] = run(client, "SELECT to_regclass(%s) IS NOT NULL", (f"{client.schema}.{name}",))
    return bool(found)


def note_row_deletes(client: pgbatch.Client) -> None:
    """A test-only trigger that writes down every archive row deleted one by one (by DELETE,
    in any partition, even one dropped afterwards); DROP and TRUNCATE fire no row trigger."""
    run(client, "CREATE TABLE {s}.deleted_row (id bigint NOT NULL)")
    run(
        client,
        "CREATE FUNCTION {s}.note_deleted_row() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN INSERT INTO {s}.deleted_row VALUES (OLD.id); RETURN NULL; END $$",
    )
    run(
        client,
        "CREATE TRIGGER note_deleted_row AFTER DELETE ON {s}.archive"
        " FOR EACH ROW EXECUTE FUNCTION {s}.note_deleted_row()",
    )


def rows_deleted_one_by_one(client: pgbatch.Client) -> list[int]:
    return [int(row[0]) for row in run(client, "SELECT id FROM {s}.deleted_row ORDER BY id")]


def partition_names(client: pgbatch.Client) -> list[str]:
    return [partition.name for partition in archive_partitions(client)]


# Measured on the 2-core development machine (PostgreSQL 15, 2026-11-30), this test's data:
# prune_archive took 7.0-7.6 ms (once 15 ms) in 15 runs; the same prune with the drop
# disabled, so that its DELETE removed the 200,050 rows one by one, took 95-98 ms in 5 runs (a
# bare DELETE of the day: 57-110 ms; the rows are cached, and a delete only stamps each one).
# The trigger above is the proof that does not depend on the machine; the time bound only
# keeps "milliseconds" honest, with room for a commit's fsync on a loaded CI machine.
PRUNE_A_BUSY_DAY_WITHIN_SECONDS = 0.5


def test_prune_drops_whole_old_days_and_deletes_only_default_partition_rows(client, queue):
    old_day = partition_for_days_ago(client, 30)
    # A busy day: every row of it goes with one DROP, none deleted one by one.
    forge_archived(
        client,
        queue.info.id,
        200_000,
        "(current_date - 30)::timestamptz + i * interval '300 ms'",
        0,
    )
    # A day that never had a partition: its rows sit in the default partition.
    forge_archived(client, queue.info.id, 50, "(current_date - 40)::timestamptz", 1_000_000)
    forge_archived(client, queue.info.id, 25, "now() - interval '1 hour'", 2_000_000)
    assert archived_count(client) == 200_075
    partitions_before = partition_names(client)
    note_row_deletes(client)

    report = prune_archive(client, older_than=timedelta(days=7))

    assert report.dropped_partitions == [old_day]
    assert not relation_exists(client, old_day)  # dropped, not emptied
    assert partition_names(client) == [name for name in partitions_before if name != old_day]
    # Deleted one by one: the default partition's 50 old rows, and not one row of the day.
    assert rows_deleted_one_by_one(client) == list(range(1_000_001, 1_000_051))
    assert report.deleted_rows == 50
    assert archived_count(client) == 25
    print(f"pruned a 200,000-row day in {report.seconds * 1000:.1f} ms")
    assert report.seconds < PRUNE_A_BUSY_DAY_WITHIN_SECONDS
    # Nothing left to do: a second run drops and deletes nothing.
    again = prune_archive(client, older_than=timedelta(days=7))
    assert (again.dropped_partitions, again.deleted_rows) == ([], 0)


def test_prune_for_one_queue_keeps_days_shared_with_other_queues(client, queue):
    other = client.create_queue("others")
    own_day = partition_for_days_ago(client, 20)
    shared_day = partition_for_days_ago(client, 21)
    forge_archived(client, queue.info.id, 100, "(current_date - 20)::timestamptz", 0)
    forge_archived(client, queue.info.id, 100, "(current_date - 21)::timestamptz", 1000)
    forge_archived(client, other.info.id, 100, "(current_date - 21)::timestamptz", 2000)

    report = prune_archive(client, older_than=timedelta(days=7), queue="jobs")

    assert report.dropped_partitions == [own_day]
    assert relation_exists(client, shared_day)
    assert report.deleted_rows == 100  # the queue's rows of the shared day
    assert archived_count(client, queue.info.id) == 0
    assert archived_count(client, other.info.id) == 100
    with pytest.raises(errors.QueueNotFound):
        prune_archive(client, older_than=timedelta(days=7), queue="nope")


def test_prune_keeps_the_day_of_the_cutoff_whole_unless_exact(client, queue):
    day = partition_for_days_ago(client, 3)
    forge_archived(
        client, queue.info.id, 1, "(current_date - 3)::timestamptz + interval '1 hour'", 0
    )
    forge_archived(
        client, queue.info.id, 1, "(current_date - 3)::timestamptz + interval '23 hours'", 10
    )
    # A cutoff at noon of that day, by the database clock.
    [(to_noon,)] = run(
        client, "SELECT now() - ((current_date - 3)::timestamptz + interval '12 hours')"
    )

    kept = prune_archive(client, older_than=to_noon)
    assert (kept.dropped_partitions, kept.deleted_rows) == ([], 0)
    assert kept.effective_cutoff < kept.cutoff  # stopped at the start of the day
    assert archived_count(client) == 2

    exact = prune_archive(client, older_than=to_noon, exact=True)
    assert (exact.dropped_partitions, exact.deleted_rows) == ([], 1)
    [(hour,)] = run(client, "SELECT extract(hour FROM archived_at)::int FROM {s}.archive")
    assert hour == 23 and relation_exists(client, day)


def test_prune_rejects_a_negative_age(client):
    with pytest.raises(errors.InvalidArgument):
        prune_archive(client, older_than=timedelta(seconds=-1))


def test_ensure_archive_partitions_creates_the_missing_days(client):
    names = {p.name for p in archive_partitions(client)}
    [(future,)] = run(client, "SELECT 'archive_p' || to_char(current_date + 3, 'YYYYMMDD')")
    assert future in names
    run(client, "DROP TABLE {s}." + future)
    assert ensure_archive_partitions(client, days_ahead=7) == 1
    assert relation_exists(client, future)
    assert ensure_archive_partitions(client, days_ahead=7) == 0
    partitions = archive_partitions(client)
    assert partitions[-1].is_default and not partitions[0].is_default


def test_health_names_a_session_that_holds_the_xmin_horizon(client, pg_dsn):
    app = f"holder-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_dsn, application_name=app) as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1").fetchone()  # the snapshot that holds the horizon
        pid = holder.info.backend_pid
        time.sleep(1.2)
        checked = health(client, xmin_warn_after=timedelta(seconds=1), holders_limit=100)
        mine = [h for h in checked.xmin_holders if h.holder == str(pid)]
        assert mine and mine[0].kind == "session" and app in mine[0].detail
        assert mine[0].seconds is not None and mine[0].seconds >= 1
        assert any(f"session {pid} " in w for w in checked.warnings)
        holder.rollback()
    after = health(client, xmin_warn_after=timedelta(seconds=1), holders_limit=100)
    assert all(h.holder != str(pid) for h in after.xmin_holders)


def test_health_warns_about_dead_tuples_in_the_hot_table(client, queue):
    run(client, "ALTER TABLE {s}.message SET (autovacuum_enabled = false)")
    # Priority 1: stored one per row (a plain batch would travel in packs, migration 0005).
    queue.batch_enqueue([{"i": i} for i in range(300)], priority=1)
    queue.archive_many(queue.dequeue_many(300))  # deletes: 300 dead tuples, no vacuum
    deadline = time.monotonic() + 10
    checked = health(client, dead_tuple_warn=250)
    while checked.dead_tuples < 300 and time.monotonic() < deadline:
        time.sleep(0.2)  # statistics reach the server up to a second after the commit
        checked = health(client, dead_tuple_warn=250)
    assert checked.dead_tuples >= 300
    assert any("dead tuples" in w for w in checked.warnings)
    assert set(checked.index_bytes) >= {"message_pkey", "message_dequeue_idx"}
    assert checked.table_bytes > 0 and checked.archive_bytes > 0
    quiet = health(client, dead_tuple_warn=10**9)
    assert not any("dead tuples" in w for w in quiet.warnings)
