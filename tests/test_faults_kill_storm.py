"""Kill storm: worker processes SIGKILLed at random moments and restarted, over thousands of
messages. Whatever the moment (mid-dequeue, mid-handler, between handler and archive), the
ledger balances: every message archived exactly once, none lost, none left, and handler
effects at most once per attempt (exactly once with a transactional handler)."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any

import pytest

from tests.faults.processes import WorkerProcess, stop_all
from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture

WORKERS = 4


@dataclass(frozen=True)
class Storm:
    mode: str
    messages: int
    seconds: float
    min_kills: int


def storm(scenario: Scenario, workers: list[WorkerProcess], plan: Storm, rng: random.Random) -> int:
    """Lets each worker work for a random 50 ms to 1 s once it has started, then SIGKILLs and
    restarts it; until time is up or few messages are left. The number of kills."""
    kill_at: dict[int, float] = {}
    kills = 0
    deadline = time.monotonic() + plan.seconds
    while time.monotonic() < deadline and scenario.remaining() > plan.messages // 20:
        time.sleep(0.02)
        for worker in workers:
            if not worker.is_working():
                continue
            due = kill_at.setdefault(worker.pid, time.monotonic() + rng.uniform(0.05, 1.0))
            if time.monotonic() >= due:
                worker.kill()
                kills += 1
                worker.start()
    return kills


STORMS = [
    Storm("record", messages=5000, seconds=6.0, min_kills=4),
    Storm("transactional", messages=5000, seconds=6.0, min_kills=4),
    pytest.param(Storm("record", 30_000, 40.0, 30), marks=pytest.mark.slow, id="record-long"),
    pytest.param(
        Storm("transactional", 30_000, 40.0, 30), marks=pytest.mark.slow, id="transactional-long"
    ),
]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("plan", STORMS, ids=lambda p: getattr(p, "mode", None))
def test_kill_storm_loses_nothing_and_archives_each_message_once(
    scenario_factory: Any, plan: Storm
) -> None:
    scenario: Scenario = scenario_factory(lease_seconds=1.0, max_attempts=100)
    scenario.enqueue(plan.messages)
    options: dict[str, Any] = {
        "mode": plan.mode,
        "batch_size": 20,
        "concurrency": 2,
        "sleep": [0.02, 0.08],
    }
    workers = [scenario.worker(**options) for _ in range(WORKERS)]
    kills = storm(scenario, workers, plan, random.Random())
    during = plan.messages - scenario.remaining()
    scenario.wait_drained(timeout=120)
    for worker in workers:  # one restarted last may still be importing: SIGTERM would kill it
        worker.wait_started()
    codes = stop_all(workers)
    ledger = scenario.ledger()
    print(
        f"\n{plan.mode}: {kills} kills, {during} of {plan.messages} messages done during the"
        f" storm, {ledger.duplicated_effects} repeated handler runs"
    )
    assert codes == [0] * WORKERS  # the survivors stop cleanly on SIGTERM
    assert kills >= plan.min_kills
    assert during > 0  # work got done between the kills
    ledger.assert_conserved(transactional=plan.mode == "transactional")
    assert not ledger.dead
    if plan.mode == "record":
        # Kills landed mid-handler or between handler and archive: those runs were repeated.
        assert ledger.duplicated_effects > 0
