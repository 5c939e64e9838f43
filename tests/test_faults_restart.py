"""PostgreSQL stopped and started mid-run, on a throwaway server of the test's own.

The worker processes live through it: their pools, their listener and their lanes log the
loss, back off, reconnect, and finish the work without a process restart; the ledger
balances (committed work survives a fast shutdown; what was in flight comes back).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pgbatch.client import migrate_with_new_connection
from tests.faults import servers
from tests.faults.processes import stop_all, wait_until
from tests.faults.scenario import Scenario

MESSAGES = 4000


@pytest.fixture
def restartable(tmp_path: Path) -> Iterator[tuple[Scenario, Path]]:
    with servers.throwaway_server() as (dsn, folder):
        migrate_with_new_connection(dsn, "faults")
        scenario = Scenario(dsn, "faults", tmp_path, lease_seconds=2.0)
        try:
            yield scenario, folder
        finally:
            scenario.close()


@pytest.mark.timeout(180)
def test_workers_ride_out_a_postgresql_restart(restartable: tuple[Scenario, Path]) -> None:
    scenario, folder = restartable
    scenario.enqueue(MESSAGES)
    options: dict[str, Any] = {
        "mode": "record",
        "batch_size": 20,
        "concurrency": 2,
        "sleep": [0.01, 0.04],
    }
    workers = [scenario.worker(**options) for _ in range(2)]
    for worker in workers:
        worker.wait_started()
    pids = [worker.pid for worker in workers]
    wait_until(lambda: scenario.effect_count() >= MESSAGES // 5, timeout=30, what="progress")
    # Work is still in flight when the server goes: otherwise the test proves nothing.
    left_before_stop = scenario.remaining()
    assert left_before_stop > 0, "every message was settled before the restart"

    scenario.client.close()  # our own pool would only complain while the server is away
    servers.stop(folder)
    down_at = time.monotonic()
    time.sleep(2.0)
    assert all(worker.alive() for worker in workers)
    servers.start(folder)
    back_after = time.monotonic() - down_at

    scenario.wait_drained(timeout=60)
    assert [worker.pid for worker in workers] == pids  # recovered in place
    wait_until(
        lambda: len(scenario.backends("-listener")) == 2,
        timeout=20,
        what="both listeners to reconnect",
    )
    assert stop_all(workers) == [0, 0]
    # And the workers really settled some of it after the restart (by the server's clock).
    assert archived_since_the_server_started(scenario) > 0
    ledger = scenario.ledger()
    ledger.assert_conserved()
    logs = scenario.logs_text()
    assert "listener reconnected" in logs
    assert "database error, retrying" in logs
    print(
        f"\n{left_before_stop} messages left at the stop; server back after {back_after:.1f}s;"
        f" {ledger.duplicated_effects} repeated runs"
    )


def archived_since_the_server_started(scenario: Scenario) -> int:
    with psycopg.connect(scenario.dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE archived_at >= pg_postmaster_start_time()"
            ).format(sql.Identifier(scenario.schema, "archive"))
        ).fetchone()
    return int(row[0]) if row else 0
