"""A handler that kills its process every time (os._exit), under the real supervisor.

Attempts are counted at delivery, so the crashes themselves use up the message's attempts:
after max_attempts deliveries it goes to the dead letters, and the crash loop stops (the
supervisor's last child lives on, idle, and stops cleanly on SIGTERM).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.processes import wait_until
from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture

MAX_ATTEMPTS = 3


def test_a_handler_that_always_crashes_ends_in_the_dead_letters(scenario_factory: Any) -> None:
    scenario: Scenario = scenario_factory(lease_seconds=1.0, max_attempts=MAX_ATTEMPTS)
    [poison] = scenario.enqueue(1)
    supervisor = scenario.worker(supervise=1, mode="exit", batch_size=10, concurrency=1)
    wait_until(
        lambda: poison in scenario.ledger().dead,
        timeout=60,
        interval=0.2,
        what="the poison message to reach the dead letters",
    )
    restarts = supervisor.log().count("restarting it")
    time.sleep(3.0)  # the loop has stopped: no new delivery, no new crash

    ledger = scenario.ledger()
    ledger.assert_conserved()
    assert ledger.dead == {poison: MAX_ATTEMPTS}
    assert ledger.effects[poison] == MAX_ATTEMPTS  # one handler run per counted delivery
    assert supervisor.log().count("restarting it") == restarts == MAX_ATTEMPTS
    [dead] = scenario.queue.dead_letters()
    assert dead.last_error == "lease expired after the final attempt"
    assert supervisor.alive()
    assert supervisor.stop() == 0


@pytest.mark.slow
def test_a_crashing_message_does_not_take_its_batch_mates_down(scenario_factory: Any) -> None:
    scenario: Scenario = scenario_factory(lease_seconds=1.0, max_attempts=MAX_ATTEMPTS)
    good = scenario.enqueue(9)
    [poison] = scenario.queue.batch_enqueue([{"poison": True}])
    scenario.enqueued.append(poison)
    supervisor = scenario.worker(
        supervise=1, mode="exit", exit_on="poison", batch_size=10, concurrency=1
    )
    wait_until(
        lambda: scenario.remaining() == 0,
        timeout=90,
        interval=0.2,
        what="every message to be settled",
    )
    ledger = scenario.ledger()
    assert supervisor.stop() == 0
    ledger.assert_conserved()
    assert set(ledger.dead) == {poison}
    assert set(ledger.archived) == set(good)
