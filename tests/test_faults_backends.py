"""Terminated backends: pg_terminate_backend on a worker's connections, by application name.

The worker process survives (same pid), logs, backs off, reconnects and finishes the work;
with only its LISTEN connection gone it keeps working by polling, the listener comes back,
and an idle worker does not spin (its CPU time stays low).
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from psycopg import sql

from tests.faults.processes import wait_until
from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture

LISTENER = "-listener"


def test_every_connection_terminated_three_times_mid_run(scenario_factory: Any) -> None:
    scenario: Scenario = scenario_factory(lease_seconds=2.0)
    scenario.enqueue(3000)
    worker = scenario.worker(mode="record", batch_size=20, concurrency=2, sleep=[0.01, 0.03])
    worker.wait_started()
    pid = worker.pid
    for _ in range(3):
        wait_until(lambda: scenario.backends() != [], timeout=10, what="the worker's pool")
        # The listener too is back from the last round: each round ends one of its
        # connections, and so costs exactly one reconnect.
        wait_until(lambda: scenario.backends(LISTENER) != [], timeout=10, what="the listener")
        time.sleep(0.5)
        assert scenario.terminate(LISTENER) >= 1
        scenario.terminate()
    scenario.wait_drained(timeout=60)
    # The last reconnect may come after the drain (the listener backs off first).
    wait_until(
        lambda: worker.log().count("listener reconnected") >= 3,
        timeout=15,
        what="the listener's third reconnect",
    )
    assert worker.alive() and worker.pid == pid  # recovered in place, not restarted
    assert worker.stop() == 0
    scenario.ledger().assert_conserved()
    log = worker.log()
    assert "database error, retrying" in log  # it saw the losses, and backed off
    assert log.count("listener reconnected") == 3


def test_listener_terminated_work_continues_by_polling_and_it_comes_back(
    scenario_factory: Any,
) -> None:
    scenario: Scenario = scenario_factory()
    worker = scenario.worker(mode="record", batch_size=20, concurrency=2)
    worker.wait_started()
    wait_until(lambda: len(scenario.backends(LISTENER)) == 1, timeout=10, what="the listener")
    [first_listener] = scenario.backends(LISTENER)
    pool_before = set(scenario.backends())

    assert scenario.terminate(LISTENER) == 1
    scenario.enqueue(50)  # announced to nobody: only polling can find these
    scenario.wait_drained(timeout=10)
    wait_until(
        lambda: scenario.backends(LISTENER) not in ([], [first_listener]),
        timeout=15,
        what="a new listener connection",
    )
    assert set(scenario.backends()) == pool_before  # the pool was left alone

    # Idle, listener back: over a few seconds the process barely uses the CPU.
    cpu_before, idle_seconds = worker.cpu_seconds(), 3.0
    time.sleep(idle_seconds)
    idle_cpu = worker.cpu_seconds() - cpu_before
    assert idle_cpu < 0.1 * idle_seconds, f"idle worker used {idle_cpu:.2f}s of CPU"

    # The new listener delivers wake-ups: messages are picked up well before the next poll
    # (a second, jittered) would find them.
    latest = []
    for _ in range(5):
        [message_id] = scenario.enqueue(1)
        scenario.wait_drained(timeout=10)
        latest.append(pickup_seconds(scenario, message_id))
        time.sleep(0.1)
    assert worker.stop() == 0
    scenario.ledger().assert_conserved()
    assert "listener connection lost" in worker.log()
    print(f"\nidle CPU {idle_cpu:.3f}s over {idle_seconds}s; pickups {latest}")
    assert sorted(latest)[2] < 0.2


def pickup_seconds(scenario: Scenario, message_id: int) -> float:
    """From the enqueue's commit to the handler's effect row, on the database clock."""
    with psycopg.connect(scenario.dsn) as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT extract(epoch FROM e.at - a.enqueued_at) FROM {} e JOIN {} a"
                " ON a.id = e.message_id WHERE e.message_id = %s"
            ).format(
                sql.Identifier(scenario.schema, "effect"),
                sql.Identifier(scenario.schema, "archive"),
            ),
            (message_id,),
        ).fetchone()
    assert row is not None
    return round(float(row[0]), 3)


def test_a_listener_kept_away_does_not_make_the_worker_spin(scenario_factory: Any) -> None:
    scenario: Scenario = scenario_factory()
    worker = scenario.worker(mode="record")
    worker.wait_started()
    cpu_before, window = worker.cpu_seconds(), 4.0
    deadline = time.monotonic() + window
    kills = 0
    while time.monotonic() < deadline:  # every reconnection is terminated at once
        kills += scenario.terminate(LISTENER)
        time.sleep(0.05)
    busy = worker.cpu_seconds() - cpu_before
    assert worker.alive()
    assert kills >= 2  # it kept trying, with backoff rather than in a tight loop
    assert kills < 40
    assert busy < 0.25 * window, f"worker used {busy:.2f}s of CPU in {window}s"
    scenario.enqueue(20)
    scenario.wait_drained(timeout=10)  # polling carried the work meanwhile
    assert worker.stop() == 0
    scenario.ledger().assert_conserved()
