"""Idle latency: an idle worker, one message enqueued every 50 ms; commit to handler start.

The producer (this process) notes the time right after each enqueue's commit returns; the
worker's handler notes the time it starts on each message; both read the same host clock.
A first message, not counted, makes sure the worker is listening before the clock runs.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pgbatch
from benchmarks import database as db
from benchmarks.consumers import Consumers, serving_worker
from benchmarks.harness import Context, ScenarioResult, log
from benchmarks.scenarios import scenario
from benchmarks.scenarios.drain import require_worker_runtime

CONCURRENCY = 4  # run_worker's default
P50_TARGET_MS, P99_TARGET_MS = 10.0, 50.0


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def _produce(queue: pgbatch.Queue[Any], seconds: float, interval: float) -> dict[int, float]:
    """One message every ``interval`` for ``seconds``: id -> time its commit returned."""
    committed: dict[int, float] = {}
    start = time.monotonic()
    for index in range(round(seconds / interval)):
        delay = start + index * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        message_id = queue.enqueue({"user_id": index, "email": f"u{index}@example.com"})
        committed[message_id] = time.time()
    return committed


def latency_run(dsn: str, seconds: float, interval: float) -> list[float]:
    """Milliseconds from commit to handler start, one per message produced."""
    consumers = Consumers(
        "worker-serve", batch_size=100, concurrency=CONCURRENCY, extra={"handler": "record"}
    )
    with db.fresh_schema(dsn, "latency") as schema:
        db.create_bench_queue(dsn, schema)
        with (
            db.ArchiveWatcher(dsn, schema, interval=0.05) as watcher,
            serving_worker(dsn, schema, consumers, watcher) as serving,
            pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client,
        ):
            committed = _produce(client.queue(db.QUEUE_NAME), seconds, interval)
            watcher.wait_for(len(committed) + 1, timeout=30)  # + the warm-up message
    started = {int(i): t for i, t in serving.results[0]["started"]}
    missing = [i for i in committed if i not in started]
    if missing:
        raise RuntimeError(f"{len(missing)} messages never reached the handler")
    return [(started[i] - t) * 1000 for i, t in committed.items()]


@scenario("latency", "Idle latency: enqueue commit to handler start, one message per 50 ms")
def latency(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    seconds, interval = ctx.sizes.latency_seconds, ctx.sizes.latency_interval
    p50s, p99s, maxima, rows = [], [], [], []
    for number in range(1, ctx.options.runs + 1):
        values = latency_run(ctx.dsn, seconds, interval)
        p50s.append(percentile(values, 0.5))
        p99s.append(percentile(values, 0.99))
        maxima.append(max(values))
        rows.append(
            [
                number,
                len(values),
                f"{min(values):.2f}",
                f"{p50s[-1]:.2f}",
                f"{p99s[-1]:.2f}",
                f"{maxima[-1]:.2f}",
            ]
        )
        log(f"[{number}] latency p50 {p50s[-1]:.2f} ms, p99 {p99s[-1]:.2f} ms")
    ctx.record(
        result,
        "latency.p50",
        "p50, enqueue commit to handler start",
        "ms",
        p50s,
        higher_is_better=False,
        target=P50_TARGET_MS,
    )
    ctx.record(
        result,
        "latency.p99",
        "p99, enqueue commit to handler start",
        "ms",
        p99s,
        higher_is_better=False,
        target=P99_TARGET_MS,
    )
    ctx.record(
        result,
        "latency.max",
        "max, enqueue commit to handler start",
        "ms",
        maxima,
        higher_is_better=False,
    )
    result.details["tables"] = [
        {
            "title": "Latency runs (ms)",
            "columns": ["run", "messages", "min", "p50", "p99", "max"],
            "rows": rows,
        }
    ]
    result.notes.append(
        f"{seconds:g} s at one message per {interval * 1000:.0f} ms per run; one"
        f" worker process, concurrency {CONCURRENCY}, batch size 100."
    )
