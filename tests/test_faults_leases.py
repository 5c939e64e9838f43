"""Handlers that outlive their lease.

While the worker lives, it renews the batch's lease, so a handler running five times its
lease is never delivered twice. When renewal is blocked (a trigger refuses it, as a broken
connection or a stalled pool would), the lease runs out, another worker takes the message
over, and the original worker's late archive is refused by the lease-token fence.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from tests.faults.processes import stop_all, wait_until
from tests.faults.scenario import Scenario
from tests.faults.scenario import scenario_factory as scenario_factory  # the fixture

LEASE = 1.0


def test_a_handler_running_five_leases_is_delivered_once(scenario_factory: Any) -> None:
    lease = 0.6
    scenario: Scenario = scenario_factory(lease_seconds=lease)
    ids = scenario.enqueue(6)
    # One lane: a batch runs five leases long while the next, prefetched, waits as long;
    # both are renewed. The second worker would take over any lease that ran out.
    slow: dict[str, Any] = {"mode": "record", "batch_size": 3, "concurrency": 1}
    workers = [scenario.worker(**slow, sleep=[5 * lease] * 2) for _ in range(2)]
    scenario.wait_drained(timeout=30)
    assert stop_all(workers) == [0, 0]
    ledger = scenario.ledger()
    ledger.assert_conserved()
    assert all(ledger.effects[i] == 1 for i in ids)
    assert all(ledger.archived_attempts[i] == 1 for i in ids)
    assert "lease lost" not in scenario.logs_text()


def block_lease_renewal(scenario: Scenario) -> None:
    """A trigger that refuses every update that only pushes a lease forward."""
    schema = sql.Identifier(scenario.schema)
    scenario.execute(
        sql.SQL(
            "CREATE FUNCTION {}.refuse_renewal() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'lease renewal blocked by the test'; END$$"
        ).format(schema)
    )
    scenario.execute(
        sql.SQL(
            "CREATE TRIGGER refuse_renewal BEFORE UPDATE ON {}.message FOR EACH ROW"
            " WHEN (OLD.lease_token IS NOT DISTINCT FROM NEW.lease_token"
            " AND OLD.attempts = NEW.attempts AND NEW.visible_at > OLD.visible_at)"
            " EXECUTE FUNCTION {}.refuse_renewal()"
        ).format(schema, schema)
    )


def lease_expired(scenario: Scenario, message_id: int) -> bool:
    with psycopg.connect(scenario.dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT visible_at < now() FROM {} WHERE id = %s").format(
                sql.Identifier(scenario.schema, "message")
            ),
            (message_id,),
        ).fetchone()
    return bool(row and row[0])


def test_blocked_renewal_lets_another_worker_take_over_and_refuses_the_late_archive(
    scenario_factory: Any,
) -> None:
    scenario: Scenario = scenario_factory(lease_seconds=LEASE)
    block_lease_renewal(scenario)
    [message_id] = scenario.enqueue(1)
    stale = scenario.worker(mode="record", batch_size=1, concurrency=1, sleep=[4 * LEASE] * 2)
    wait_until(
        lambda: scenario.ledger().effects[message_id] == 1,
        timeout=30,
        what="the first handler to start",
    )
    wait_until(lambda: lease_expired(scenario, message_id), timeout=10, what="the lease to expire")
    taker = scenario.worker(mode="record", batch_size=1, concurrency=1)
    scenario.wait_drained(timeout=30)  # archived by the taker while the first still sleeps
    wait_until(lambda: "lease lost" in stale.log(), timeout=15, what="the late archive")
    assert stop_all([stale, taker]) == [0, 0]

    ledger = scenario.ledger()
    ledger.assert_conserved()
    assert ledger.archived[message_id] == 1
    assert ledger.archived_attempts[message_id] == 2  # the taker's delivery
    assert ledger.effects[message_id] == 2  # both handlers ran: at-least-once, fenced archive
    assert "lease renewal failed" in stale.log()
    assert '"lease_losses": 1' in stale.log()  # its report: the archive was refused
