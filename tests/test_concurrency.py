"""Many consumers at once on a real PostgreSQL: threads, processes, races, concurrent migrate.

Leases are long enough never to expire during a test, so any message handed to two consumers
is a broken lease, and every id must reach the archive exactly once.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgbatch
from pgbatch.client import migrate_with_new_connection
from pgbatch.migrate import available_migrations

LEASE_SECONDS = 300
BATCH = 50


def archived_id_counts(client: pgbatch.Client, queue: pgbatch.Queue[Any]) -> Counter[int]:
    with client.db.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id FROM {} WHERE queue_id = %s").format(
                sql.Identifier(client.schema, "archive")
            ),
            (queue.info.id,),
        ).fetchall()
    return Counter(row[0] for row in rows)


def drain(queue: pgbatch.Queue[Any]) -> list[tuple[int, int, list[int]]]:
    """Dequeues and archives until nothing is visible; (lease token, attempts, ids) per batch.

    Raises if an archive comes back short: with long leases every archive must succeed.
    """
    taken = []
    while batch := queue.dequeue_many(BATCH, lease_seconds=LEASE_SECONDS):
        ids = [m.id for m in batch]
        archived = queue.archive_many(batch)
        if sorted(archived) != sorted(ids):
            raise AssertionError(f"archive refused held messages: {set(ids) - set(archived)}")
        taken.append((batch[0].lease_token, max(m.attempts for m in batch), ids))
    return taken


def check_every_id_archived_exactly_once(
    client: pgbatch.Client,
    queue: pgbatch.Queue[Any],
    enqueued: list[int],
    per_consumer: list[list[tuple[int, int, list[int]]]],
) -> None:
    handed_out = Counter(i for taken in per_consumer for _, _, ids in taken for i in ids)
    assert [i for i, n in handed_out.items() if n > 1] == []  # never to two consumers
    assert sorted(handed_out) == sorted(enqueued)
    tokens = [token for taken in per_consumer for token, _, _ in taken]
    assert len(tokens) == len(set(tokens))  # a fresh lease token per dequeue
    assert {attempts for taken in per_consumer for _, attempts, _ in taken} == {1}
    in_archive = archived_id_counts(client, queue)
    assert [i for i, n in in_archive.items() if n > 1] == []
    assert sorted(in_archive) == sorted(enqueued)
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.delayed, stats.dead) == (0, 0, 0, 0)
    assert stats.archived == len(enqueued)


def enqueue_many(queue: pgbatch.Queue[Any], count: int) -> list[int]:
    ids: list[int] = []
    for start in range(0, count, 1000):
        ids += queue.batch_enqueue([{"n": n} for n in range(start, min(count, start + 1000))])
    return ids


# --- threads --------------------------------------------------------------------------------


def test_eight_threads_drain_one_queue_without_handing_a_message_out_twice(
    client: pgbatch.Client,
) -> None:
    queue = client.create_queue("shared", lease_seconds=LEASE_SECONDS)
    enqueued = enqueue_many(queue, 10_000)
    start = threading.Barrier(8)

    def consumer() -> list[tuple[int, int, list[int]]]:
        start.wait(timeout=30)
        return drain(queue)

    with ThreadPoolExecutor(8) as pool:
        per_consumer = [f.result() for f in [pool.submit(consumer) for _ in range(8)]]
    check_every_id_archived_exactly_once(client, queue, enqueued, per_consumer)
    assert sum(1 for taken in per_consumer if taken) >= 4  # the work was really shared


# --- processes ------------------------------------------------------------------------------


def drain_in_process(dsn: str, schema: str, barrier: Barrier, out: str) -> None:
    """Entry point of a spawned consumer process: its own client, then drain, then report."""
    with pgbatch.connect(dsn, schema=schema, max_size=2) as client:
        queue = client.queue("shared")
        barrier.wait(timeout=60)
        started = time.monotonic()
        taken = drain(queue)
        finished = time.monotonic()
    Path(out).write_text(json.dumps({"taken": taken, "span": [started, finished]}))


def test_four_processes_drain_one_queue_and_archive_every_id_exactly_once(
    pg_dsn: str, schema: str, client: pgbatch.Client, tmp_path: Path
) -> None:
    queue = client.create_queue("shared", lease_seconds=LEASE_SECONDS)
    enqueued = enqueue_many(queue, 10_000)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(4)
    outputs = [tmp_path / f"consumer-{i}.json" for i in range(4)]
    processes = [
        context.Process(target=drain_in_process, args=(pg_dsn, schema, barrier, str(out)))
        for out in outputs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
    assert [p.exitcode for p in processes] == [0, 0, 0, 0]
    reports = [json.loads(out.read_text()) for out in outputs]
    per_consumer = [[(t, a, ids) for t, a, ids in r["taken"]] for r in reports]
    check_every_id_archived_exactly_once(client, queue, enqueued, per_consumer)
    assert all(taken for taken in per_consumer)  # every process took a share
    # The four drains overlapped in time: they really competed for the same rows.
    assert max(r["span"][0] for r in reports) < min(r["span"][1] for r in reports)


# --- races for one message ------------------------------------------------------------------


def test_two_dequeuers_race_for_one_message_and_exactly_one_wins(client: pgbatch.Client) -> None:
    queue = client.create_queue("race", lease_seconds=LEASE_SECONDS)
    start = threading.Barrier(2)

    def racer() -> list[int]:
        start.wait(timeout=10)
        return [m.id for m in queue.dequeue_many(1)]

    with ThreadPoolExecutor(2) as pool:
        for _ in range(40):
            [message_id] = queue.batch_enqueue([{"prize": True}])
            results = [f.result() for f in [pool.submit(racer) for _ in range(2)]]
            assert sorted(results, key=len) == [[], [message_id]]


def test_a_row_locked_by_an_open_dequeue_is_skipped_then_rolled_back_to_visible(
    pg_dsn: str, client: pgbatch.Client
) -> None:
    """Forces the race deterministically: one dequeue holds its row lock, uncommitted."""
    queue = client.create_queue("race", lease_seconds=LEASE_SECONDS)
    [message_id] = queue.batch_enqueue([{"prize": True}])
    params = {
        "queue_id": queue.info.id,
        "limit": 1,
        "lease_seconds": LEASE_SECONDS,
        "done_channel": client.done_channel,
    }
    with psycopg.connect(pg_dsn) as first:
        rows = first.execute(client.queries.message_dequeue_many, params).fetchall()
        assert [row[0] for row in rows] == [message_id]
        started = time.monotonic()
        assert queue.dequeue_many(1) == []  # SKIP LOCKED: no waiting on the open transaction
        assert time.monotonic() - started < 2
        first.rollback()
    [winner] = queue.dequeue_many(1)
    assert winner.id == message_id and winner.attempts == 1


def test_disjoint_batches_for_many_simultaneous_dequeuers(client: pgbatch.Client) -> None:
    queue = client.create_queue("race", lease_seconds=LEASE_SECONDS)
    enqueued = queue.batch_enqueue([{"i": i} for i in range(400)])
    start = threading.Barrier(8)

    def grab() -> list[int]:
        start.wait(timeout=10)
        return [m.id for m in queue.dequeue_many(100)]

    with ThreadPoolExecutor(8) as pool:
        grabbed = [f.result() for f in [pool.submit(grab) for _ in range(8)]]
    flat = [i for ids in grabbed for i in ids]
    assert len(flat) == len(set(flat)) == 400
    assert sorted(flat) == enqueued


def test_concurrent_create_queue_makes_one_queue(client: pgbatch.Client) -> None:
    start = threading.Barrier(8)

    def create() -> int:
        start.wait(timeout=10)
        return client.create_queue("popular").info.id

    with ThreadPoolExecutor(8) as pool:
        ids = {f.result() for f in [pool.submit(create) for _ in range(8)]}
    assert len(ids) == 1
    assert [q.name for q in client.queues()] == ["popular"]


# --- concurrent migrate ---------------------------------------------------------------------


@pytest.fixture
def fresh_schema_name(pg_dsn: str) -> Iterator[str]:
    """A schema name nobody has migrated yet; dropped afterwards."""
    name = f"t_mig_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def applied_migration_rows(dsn: str, schema: str) -> list[int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(schema, "schema_migration")
            )
        ).fetchall()
    return [row[0] for row in rows]


def check_applied_once(dsn: str, schema: str, results: list[list[int]]) -> None:
    every_version = [m.version for m in available_migrations()]
    assert sorted(results, key=len) == [[]] * (len(results) - 1) + [every_version]
    assert applied_migration_rows(dsn, schema) == every_version
    with pgbatch.connect(dsn, schema=schema, max_size=1) as client:  # and the schema works
        queue = client.create_queue("after-migrate")
        queue.enqueue({"ok": True})
        assert len(queue.dequeue_many(1)) == 1


def test_concurrent_migrate_from_threads_applies_each_migration_once(
    pg_dsn: str, fresh_schema_name: str
) -> None:
    start = threading.Barrier(6)

    def migrate() -> list[int]:
        start.wait(timeout=10)
        return migrate_with_new_connection(pg_dsn, fresh_schema_name)

    with ThreadPoolExecutor(6) as pool:
        results = [f.result() for f in [pool.submit(migrate) for _ in range(6)]]
    check_applied_once(pg_dsn, fresh_schema_name, results)


def migrate_in_process(dsn: str, schema: str, barrier: Barrier, out: str) -> None:
    with pgbatch.connect(dsn, schema=schema, max_size=1) as client:
        barrier.wait(timeout=60)
        applied = client.migrate()
    Path(out).write_text(json.dumps(applied))


def test_concurrent_migrate_from_processes_applies_each_migration_once(
    pg_dsn: str, fresh_schema_name: str, tmp_path: Path
) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(3)
    outputs = [tmp_path / f"migrate-{i}.json" for i in range(3)]
    processes = [
        context.Process(
            target=migrate_in_process, args=(pg_dsn, fresh_schema_name, barrier, str(o))
        )
        for o in outputs
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=90)
    assert [p.exitcode for p in processes] == [0, 0, 0]
    results = [json.loads(out.read_text()) for out in outputs]
    check_applied_once(pg_dsn, fresh_schema_name, results)
