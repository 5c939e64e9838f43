"""Lock and statement timeouts: with another session holding the queue table, calls fail fast
with RetryableDatabaseError instead of waiting, and succeed once the lock is gone; a worker
with a lock timeout backs off meanwhile instead of spinning, then finishes the work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgbatch
from pgbatch import errors
from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture


@contextmanager
def table_locked(dsn: str, schema: str, table: str = "message") -> Iterator[None]:
    """Another session holds ACCESS EXCLUSIVE on the table (as a careless migration would)."""
    with psycopg.connect(dsn) as holder:
        holder.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema, table))
        )
        yield
        holder.rollback()


@pytest.mark.parametrize("setting", ["lock_timeout", "statement_timeout"])
def test_dequeue_fails_fast_and_retryably_on_a_locked_table(
    pg_dsn: str, schema: str, client: pgbatch.Client, setting: str
) -> None:
    client.create_queue("jobs").batch_enqueue([{"n": i} for i in range(5)])
    options: dict[str, Any] = {setting: 0.2}
    with pgbatch.connect(pg_dsn, schema=schema, max_size=2, **options) as impatient:
        jobs = impatient.queue("jobs")
        with table_locked(pg_dsn, schema):
            for call in (lambda: jobs.dequeue_many(5), lambda: jobs.enqueue({"late": 1})):
                started = time.monotonic()
                with pytest.raises(errors.RetryableDatabaseError) as caught:
                    call()
                assert time.monotonic() - started < 2.0
                expected = "55P03" if setting == "lock_timeout" else "57014"
                assert caught.value.__cause__ is not None
                assert getattr(caught.value.__cause__, "sqlstate", None) == expected
        assert len(jobs.dequeue_many(5)) == 5  # the same client works once the lock is gone


def test_timeouts_keep_the_dsn_own_options(pg_dsn: str, schema: str) -> None:
    dsn = make_conninfo(pg_dsn, options="-c work_mem=7MB")
    with (
        pgbatch.connect(dsn, schema=schema, lock_timeout=1.5) as client,
        client.db.connection() as conn,
    ):
        shown = [conn.execute(f"SHOW {name}").fetchone() for name in ("work_mem", "lock_timeout")]
    assert shown == [("7MB",), ("1500ms",)]


def test_a_bad_timeout_is_refused_before_connecting(pg_dsn: str, schema: str) -> None:
    with pytest.raises(errors.InvalidArgument, match="lock_timeout"):
        pgbatch.connect(pg_dsn, schema=schema, lock_timeout=-1)


def test_a_worker_with_a_lock_timeout_backs_off_while_the_table_is_locked(
    scenario_factory: Any,
) -> None:
    scenario: Scenario = scenario_factory()
    scenario.enqueue(100)
    # The libpq way to give any worker a lock_timeout, without code: options in its DSN.
    dsn = make_conninfo(scenario.dsn, options="-c lock_timeout=200")
    worker = scenario.worker(dsn=dsn, mode="record", concurrency=2)
    with table_locked(scenario.dsn, scenario.schema):
        worker.wait_started()
        cpu_before, window = worker.cpu_seconds(), 3.0
        time.sleep(window)
        retries = worker.log().count("database error, retrying")
        busy = worker.cpu_seconds() - cpu_before
        assert scenario.effect_count() == 0  # no handler ran through the lock
    scenario.wait_drained(timeout=20)  # and all of it once the lock is gone
    assert worker.stop() == 0
    scenario.ledger().assert_conserved()
    print(f"\nlocked {window}s: {retries} retries, {busy:.2f}s CPU")
    assert 2 <= retries <= 30  # failing fast, then backing off: no tight loop
    assert busy < 0.2 * window
    assert "55P03" in worker.log() or "lock timeout" in worker.log()
