"""The worker's side upkeep: vacuuming the hot table once dead tuples pile up."""

from __future__ import annotations

import time

import pgbatch
from pgbatch.maintenance import archive_partitions
from pgbatch.worker.upkeep import VACUUM_MIN_DEAD, ensure_partitions, vacuum_if_bloated


def dead_tuples(client: pgbatch.Client) -> int:
    """The message table's (messages stored one per row)."""
    with client.db.connection() as conn:
        rows = conn.execute(client.queries.hot_tables_vacuum_candidates).fetchall()
    return next((int(dead) for table, dead, _, _ in rows if table == "message"), 0)


def test_the_hot_table_is_vacuumed_only_once_dead_tuples_pile_up(client, queue):
    assert client.db.run(vacuum_if_bloated(client.queries), transaction=False) is False
    total = VACUUM_MIN_DEAD["message"] + 5_000
    # Priority 1: stored one per row (a plain batch would travel in packs, migration 0005).
    queue.batch_enqueue([{"i": i} for i in range(total)], priority=1)
    while messages := queue.dequeue_many(1000):
        queue.archive_many(messages)
    deadline = time.monotonic() + 10
    while dead_tuples(client) < VACUUM_MIN_DEAD["message"] and time.monotonic() < deadline:
        time.sleep(0.2)  # backends report their statistics a moment after commit
    assert dead_tuples(client) >= VACUUM_MIN_DEAD["message"]
    assert client.db.run(vacuum_if_bloated(client.queries), transaction=False) is True
    assert dead_tuples(client) < VACUUM_MIN_DEAD["message"]


def test_partitions_are_ensured_ahead_and_idempotently(client):
    client.db.run(ensure_partitions(client.queries), transaction=False)
    first = archive_partitions(client)
    client.db.run(ensure_partitions(client.queries), transaction=False)
    assert archive_partitions(client) == first
    days = [p for p in first if not p.is_default]
    assert len(days) >= 9
