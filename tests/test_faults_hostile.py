"""Hostile texts through a real worker: a handler that fails messages with, raises, and tries
to complete with texts PostgreSQL cannot store (NUL, unpaired surrogates, 40,000 characters).
The worker does not crash: failures are stored (made storable), the poison messages reach the
dead letters, their batch-mates are archived."""

from __future__ import annotations

from typing import Any

from pgbatch.texts import storable_error
from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture
from tests.faults.worker_program import HOSTILE_TEXT


def test_hostile_error_texts_and_results_never_crash_the_worker(scenario_factory: Any) -> None:
    scenario: Scenario = scenario_factory(max_attempts=2, backoff_base=0)
    actions = ["ok"] * 12 + ["fail", "raise", "complete"]
    ids = dict(
        zip(scenario.queue.batch_enqueue([{"do": a} for a in actions]), actions, strict=True)
    )
    scenario.enqueued += list(ids)
    worker = scenario.worker(mode="hostile", batch_size=15, concurrency=1)
    worker.wait_started()
    scenario.wait_drained(timeout=30)
    assert worker.alive()
    assert worker.stop() == 0

    ledger = scenario.ledger()
    # Poison isolation re-runs the halves of a failed batch within one delivery, so handler
    # runs are bounded by attempts times (1 + log2 of the batch), not by attempts.
    ledger.assert_conserved(effects=False)
    assert all(n <= 2 * (1 + 4) for n in ledger.effects.values())
    assert set(ledger.archived) == {i for i, a in ids.items() if a == "ok"}
    dead = {ids[d.id]: d.last_error for d in scenario.queue.dead_letters()}
    assert dead["fail"] == storable_error(HOSTILE_TEXT)
    assert dead["raise"] == storable_error(f"RuntimeError: {HOSTILE_TEXT}")
    assert dead["complete"] is not None and "NUL" in dead["complete"]
    assert all("\x00" not in (text or "") for text in dead.values())
