"""Pool exhaustion: a worker whose pool has one or two connections, under load, with handlers
that outlive the renewal interval. Lease renewal, heartbeats, fetching and archiving queue up
for the connections; none deadlocks another, the worker neither crashes nor stalls, and the
ledger balances."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture

MESSAGES = 200


@pytest.mark.parametrize(
    ("pool_size", "mode"),
    [
        (1, "record"),
        (2, "transactional"),
        (2, "async_transactional"),
        # Each running async transactional batch holds the only pooled connection for the
        # handler's whole run: lease renewal has a connection of its own, so it still renews.
        (1, "async_transactional"),
    ],
)
def test_a_tiny_pool_under_load_neither_deadlocks_nor_crashes(
    scenario_factory: Any, pool_size: int, mode: str
) -> None:
    scenario: Scenario = scenario_factory(lease_seconds=0.9)
    scenario.enqueue(MESSAGES)
    worker = scenario.worker(
        mode=mode, pool_size=pool_size, concurrency=4, batch_size=10, sleep=[0.3, 0.5]
    )
    worker.wait_started()
    scenario.wait_drained(timeout=120)
    assert worker.alive()
    assert worker.stop() == 0
    scenario.ledger().assert_conserved(transactional=mode != "record")
    report = json.loads(worker.log().strip().splitlines()[-1])
    print(f"\npool {pool_size}, {mode}: {report}")
    if mode != "async_transactional":
        # Handlers hold no pooled connection: renewal always gets one in time.
        assert report == {"archived": MESSAGES, "lease_losses": 0}
