"""Slow I/O (the .NET seed): every message needs a 200 ms call; one worker process.

The handler is async and gathers the calls of its batch (``asyncio.sleep`` stands for the
call, so the figure is the runtime's, not a test server's). The worker is started and idle
first; the clock runs from the commit of the N messages to the archive holding all of them
(polled every 10 ms). Also recorded: the worker's peak RSS, and its start-up time.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import pgbatch
from benchmarks import database as db
from benchmarks.consumers import Consumers, serving_worker
from benchmarks.harness import Case, Context, ScenarioResult
from benchmarks.scenarios import scenario
from benchmarks.scenarios.drain import require_worker_runtime
from benchmarks.scenarios.enqueue import user_payloads

BATCH_SIZE = 1000
CONCURRENCY = 20  # batches in flight: 20,000 messages' calls can wait at once
# The targets: seconds by message count, and RSS growth from 1,000 to 20,000.
WALL_TARGETS = {1_000: 0.3, 10_000: 1.5, 20_000: 3.0}
RSS_GROWTH_TARGET_MIB = 50.0


@dataclass(frozen=True, slots=True)
class SlowRun:
    seconds: float
    peak_rss_mib: float
    startup_seconds: float


def slow_run(dsn: str, count: int, call_seconds: float) -> SlowRun:
    consumers = Consumers(
        "worker-serve",
        batch_size=BATCH_SIZE,
        concurrency=CONCURRENCY,
        extra={"handler": "slow", "call_seconds": call_seconds},
    )
    payloads = user_payloads(count)
    with db.fresh_schema(dsn, "slow_io") as schema:
        db.create_bench_queue(dsn, schema)
        with (
            db.ArchiveWatcher(dsn, schema) as watcher,
            serving_worker(dsn, schema, consumers, watcher) as serving,
            pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client,
        ):
            client.queue(db.QUEUE_NAME).batch_enqueue(payloads)
            committed = time.time()
            done = watcher.wait_for(count + 1, timeout=120)  # + the warm-up message
    return SlowRun(
        done - committed, serving.results[0]["peak_rss_kib"] / 1024, serving.startup_seconds
    )


@scenario("slow-io", "Slow I/O: messages whose async handler awaits a 200 ms call each")
def slow_io(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    call, counts = ctx.sizes.slow_io_seconds, ctx.sizes.slow_io_counts
    runs: dict[int, list[SlowRun]] = {n: [] for n in counts}

    def run(count: int) -> float:
        runs[count].append(slow_run(ctx.dsn, count, call))
        return runs[count][-1].seconds

    ctx.rounds(
        result,
        [
            Case(
                f"slow_io.{n}",
                f"{n:,} messages x {call * 1000:.0f} ms, 1 worker process",
                "s",
                functools.partial(run, n),
                higher_is_better=False,
                target=WALL_TARGETS.get(n) if call == 0.2 else None,
            )
            for n in counts
        ],
    )
    for n in counts:
        ctx.record(
            result,
            f"slow_io.{n}.peak_rss",
            f"peak RSS of the worker, {n:,} messages",
            "MiB",
            [r.peak_rss_mib for r in runs[n]],
            higher_is_better=False,
        )
    growth = [
        b.peak_rss_mib - a.peak_rss_mib
        for a, b in zip(runs[counts[0]], runs[counts[-1]], strict=True)
    ]
    ctx.record(
        result,
        "slow_io.rss_growth",
        f"peak RSS growth from {counts[0]:,} to {counts[-1]:,} messages",
        "MiB",
        growth,
        higher_is_better=False,
        target=RSS_GROWTH_TARGET_MIB,
    )
    ctx.record(
        result,
        "slow_io.startup",
        "worker start-up (start signal to first archive)",
        "s",
        [r.startup_seconds for runs_n in runs.values() for r in runs_n],
        higher_is_better=False,
    )
    result.notes.append(
        f"One worker process, batch_size={BATCH_SIZE}, concurrency={CONCURRENCY}; the call is"
        f" asyncio.sleep({call}). Clock from the enqueue's commit (one batch_enqueue of all N)"
        " to the archive holding all N, polled every 10 ms; the worker was idle and listening."
    )
