"""Churn: a million messages through one live queue, in tenths; does throughput hold?

Two worker processes (batch 100) serve the queue from first to last. Each tenth, this
process enqueues its messages (batch_enqueue, batches of 1,000) while the workers drain
them; the tenth ends when the queue is empty (all archived: a no-op handler). Throughput of
a tenth = its messages / (end - start). Same schema throughout, autovacuum as the migrations set it.
After each tenth: the packs' table's dead tuples and sizes (plain batches travel in packs,
migration 0005); at the end, every table's.
"""

from __future__ import annotations

import time
from typing import Any

import pgbatch
from benchmarks import database as db
from benchmarks.consumers import Consumers, serving_worker
from benchmarks.harness import Context, ScenarioResult, log, stopwatch
from benchmarks.scenarios import scenario
from benchmarks.scenarios.drain import require_worker_runtime
from benchmarks.scenarios.enqueue import chunks, enqueue_all, user_payloads

TENTHS = 10
LAST_TO_FIRST_TARGET = 0.8
STATS_SETTLE_SECONDS = 1.5  # backends report table statistics about once a second


CONSUMERS = Consumers("worker-serve", processes=2, batch_size=100, concurrency=2)


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f}"


def _hot_table(dsn: str, schema: str) -> list[Any]:
    """The packs' table, where the churn's plain batches travel (migration 0005)."""
    tables, indexes = db.table_health(dsn, schema)
    packs = next(t for t in tables if t.table == "message_pack")
    return [
        packs.dead_tuples,
        packs.vacuums,
        _mib(packs.table_bytes),
        _mib(indexes.get("message_pack_dequeue_idx", 0)),
        _mib(indexes.get("message_pack_pkey", 0)),
    ]


def _tenth(
    queue: pgbatch.Queue[Any], watcher: db.ArchiveWatcher, number: int, size: int, batch: int
) -> list[Any]:
    """[tenth, enqueue-only rate, throughput of the tenth]."""
    batches = chunks(user_payloads(size, start=number * size), batch)
    start = time.time()
    enqueue_seconds = enqueue_all(queue, batches)
    done = watcher.wait_until_drained(timeout=600)
    return [number + 1, size / enqueue_seconds, size / (done - start)]


@scenario("churn", "Churn: 1,000,000 messages through enqueue, drain and archive, in tenths")
def churn(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    size = max(1, ctx.sizes.churn_messages // TENTHS)
    rows: list[list[Any]] = []
    with db.fresh_schema(ctx.dsn, "churn") as schema, stopwatch() as elapsed:
        db.create_bench_queue(ctx.dsn, schema)
        with (
            db.ArchiveWatcher(ctx.dsn, schema, interval=0.02) as watcher,
            serving_worker(ctx.dsn, schema, CONSUMERS, watcher),
            pgbatch.connect(ctx.dsn, schema=schema, min_size=1, max_size=1) as client,
        ):
            queue = client.queue(db.QUEUE_NAME)
            for number in range(TENTHS):
                row = _tenth(queue, watcher, number, size, ctx.sizes.enqueue_batch)
                rows.append(row + _hot_table(ctx.dsn, schema))
                log(f"tenth {number + 1}: {row[2]:,.0f} msg/s (enqueue alone {row[1]:,.0f}/s)")
            # Once, at the end: everything went through the archive (+ the warm-up message).
            watcher.wait_for(size * TENTHS + 1, timeout=60)
        time.sleep(STATS_SETTLE_SECONDS)
        final = db.table_health(ctx.dsn, schema)
    _record(ctx, result, rows, size * TENTHS, elapsed())
    _final_tables(result, rows, final)


def _record(
    ctx: Context, result: ScenarioResult, rows: list[list[Any]], total: int, seconds: float
) -> None:
    for column, key, label in ((2, "tenth", "throughput"), (1, "enqueue", "enqueue alone")):
        values = [float(row[column]) for row in rows]
        ctx.record(result, f"churn.{key}.tenths", f"{label}, the ten tenths", "msg/s", values)
        last_to_first = values[-1] / values[0]
        ctx.record(
            result,
            f"churn.{key}.last_to_first",
            f"{label}, last tenth / first tenth",
            "x",
            [last_to_first],
            target=LAST_TO_FIRST_TARGET,
        )
    result.notes.append(
        f"{total:,} messages in {seconds:.0f} s, one run (its tenths are the distribution);"
        f" {CONSUMERS.processes} worker processes, batch {CONSUMERS.batch_size}, concurrency"
        f" {CONSUMERS.concurrency}. Autovacuum as set by the migrations (autovacuum_naptime is"
        " the server's)."
    )


def _final_tables(
    result: ScenarioResult,
    rows: list[list[Any]],
    final: tuple[list[db.TableHealth], dict[str, int]],
) -> None:
    tables, indexes = final
    archive = [t for t in tables if t.table.startswith("archive")]
    health = [
        [t.table, t.live_tuples, t.dead_tuples, t.vacuums, _mib(t.table_bytes), _mib(t.index_bytes)]
        for t in tables
        if not t.table.startswith("archive")
    ]
    health.append(
        [
            "archive (all partitions)",
            sum(t.live_tuples for t in archive),
            sum(t.dead_tuples for t in archive),
            sum(t.vacuums for t in archive),
            _mib(sum(t.table_bytes for t in archive)),
            _mib(sum(t.index_bytes for t in archive)),
        ]
    )
    result.details["tables"] = [
        {
            "title": "Churn: each tenth (msg/s), and the packs' table after it",
            "columns": [
                "tenth",
                "throughput",
                "enqueue alone",
                "dead tuples",
                "vacuums",
                "message_pack MiB",
                "dequeue index MiB",
                "pkey MiB",
            ],
            "rows": [[r[0], f"{r[2]:,.0f}", f"{r[1]:,.0f}", *r[3:]] for r in rows],
        },
        {
            "title": "Churn: tables at the end (pg_stat_user_tables, pg_relation_size)",
            "columns": [
                "table",
                "live tuples",
                "dead tuples",
                "vacuums",
                "table MiB",
                "indexes MiB",
            ],
            "rows": health,
        },
        {
            "title": "Churn: hot tables' indexes at the end",
            "columns": ["index", "MiB"],
            "rows": [[name, _mib(size)] for name, size in sorted(indexes.items())],
        },
    ]
