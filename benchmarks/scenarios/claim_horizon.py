"""The first risk of the batch-lease proposal (docs/packs.md): claims in
commit order wait for every transaction older than the messages they would take.

Limit (e)'s layout with work arriving while it is consumed: a pgbench producer writes
PRODUCER_ROWS messages per transaction at PRODUCER_RATE messages/s; the same psycopg loops as
in drain-profile (2 processes of 2 connections, batch 100) claim and complete them until all
are done; meanwhile HOLDERS pgbench clients run transactions that write a row and stay open
``hold`` ms, back to back, as transactional batch handlers would. Measured per hold time: the
delay from each message's enqueue to its claim (median and 99th percentile), and how long the
consumers took past the producer's end.
"""

from __future__ import annotations

import math
import time

from benchmarks import database as db
from benchmarks.consumers import Consumers
from benchmarks.harness import Case, Context, ScenarioResult
from benchmarks.pgbench import find_pgbench, start_script
from benchmarks.processes import Children
from benchmarks.scenarios import Skip, scenario
from benchmarks.scenarios.drain import WORKER_CONCURRENCY
from benchmarks.scenarios.limit import LEASE_BATCH

PRODUCER_ROWS = 100
PRODUCER_RATE = 20_000  # messages/s, below what the consumers drain (about 90k/s here)
HOLDERS = 4  # a worker's lanes, each with a transactional handler
HOLD_MS = (0, 10, 100, 1000)
CONSUMER_PROCESSES = 2


def _claim_delays(dsn: str, messages: int, hold_ms: int) -> tuple[float, float, float]:
    """(median, 99th percentile) enqueue-to-claim delay in ms, and the seconds the consumers
    ran past the producer's end."""
    with db.fresh_schema(dsn, "horizon") as schema, db.connect(dsn) as conn:
        queue_id = db.create_bench_queue(dsn, schema)
        conn.execute(db.helper("ordered_layout_create", schema))
        conn.execute(db.helper("horizon_holder_create", schema))
        conn.execute(db.helper("ordered_layout_cursor_create", schema), {"queue_id": queue_id})
        transactions = math.ceil(messages / PRODUCER_ROWS)
        produced = transactions * PRODUCER_ROWS
        consumers = Consumers(
            "psycopg-drain",
            processes=CONSUMER_PROCESSES,
            batch_size=LEASE_BATCH,
            concurrency=WORKER_CONCURRENCY,
            extra={"layout": "ordered", "queue_id": queue_id, "until": produced},
        )
        seconds = max(1, math.ceil(produced / PRODUCER_RATE))
        with Children(consumers.mode, consumers.configs(dsn, schema)) as group:
            holders = None
            if hold_ms:
                holders = start_script(
                    dsn,
                    schema,
                    "horizon_hold.sql",
                    clients=HOLDERS,
                    variables={"hold_ms": hold_ms},
                    seconds=seconds + 1,
                )
            group.go()
            producer = start_script(
                dsn,
                schema,
                "horizon_produce.sql",
                clients=1,
                variables={"queue_id": queue_id, "rows": PRODUCER_ROWS},
                scripts_per_client=transactions,
                rate=PRODUCER_RATE / PRODUCER_ROWS,
            )
            producer.finish()
            produced_at = time.time()  # the children's clock: the same host's
            results = group.results()
            if holders is not None:
                holders.finish()
        done = int(db.scalar(dsn, db.helper("ordered_layout_done_count", schema)))
        if done != produced:
            raise RuntimeError(f"the consumers completed {done} of {produced} messages")
        conn.execute(db.helper("ordered_layout_analyze", schema))
        median, p99 = db.scalar(dsn, db.helper("ordered_layout_claim_latency", schema))
    past_end = max(float(r["end"]) for r in results) - produced_at
    return 1000 * float(median), 1000 * float(p99), max(0.0, past_end)


@scenario("claim-horizon", "Batch-lease proposal: claims in commit order behind long transactions")
def claim_horizon(ctx: Context, result: ScenarioResult) -> None:
    if find_pgbench() is None:
        raise Skip("pgbench not found: it runs the producer and the long transactions")
    figures: dict[int, list[tuple[float, float, float]]] = {hold: [] for hold in HOLD_MS}

    def case(hold: int, index: int, key: str, label: str, unit: str) -> Case:
        def measure() -> float:
            if index == 0:  # one drain per round and hold time gives all three figures
                figures[hold].append(_claim_delays(ctx.dsn, ctx.sizes.messages, hold))
            return figures[hold][-1][index]

        return Case(key, label, unit, measure, higher_is_better=False)

    cases = []
    for hold in HOLD_MS:
        behind = f"{HOLDERS} transactions of {hold} ms open" if hold else "no long transaction"
        cases += [
            case(hold, 0, f"horizon.h{hold}.p50", f"claim delay p50, {behind}", "ms"),
            case(hold, 1, f"horizon.h{hold}.p99", f"claim delay p99, {behind}", "ms"),
            case(hold, 2, f"horizon.h{hold}.tail", f"drained after the producer, {behind}", "s"),
        ]
    ctx.rounds(result, cases)
    result.notes.append(
        f"{ctx.sizes.messages:,} messages produced at {PRODUCER_RATE:,} msg/s in transactions of"
        f" {PRODUCER_ROWS} (pgbench), claimed by {CONSUMER_PROCESSES} processes of"
        f" {WORKER_CONCURRENCY} psycopg connections at batch {LEASE_BATCH} on limit (e)'s layout."
        " Delay: from a message's enqueue (its transaction's start) to its claim (the claiming"
        " transaction's start)."
    )
