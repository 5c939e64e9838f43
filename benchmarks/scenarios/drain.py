"""Drain: a ready backlog moved to the archive by consumer processes, vs limit (b).

Limit (b) (pgbench, 1 and 2 clients) runs again in each of these scenarios' rounds, so
that each ratio compares figures taken side by side.

Two consumers: the core API in a plain loop (``dequeue_many`` then ``archive_many``, what a
user without the worker runtime writes), and the worker runtime (``App.run_worker`` with a
no-op batch handler) once it exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from benchmarks import database as db
from benchmarks.consumers import Consumers, drain_fresh_backlog, worker_runtime_available
from benchmarks.harness import Case, Comparison, Context, ScenarioResult, stopwatch
from benchmarks.pgbench import find_pgbench
from benchmarks.scenarios import Skip, scenario
from benchmarks.scenarios.limit import lease_case

ROOT = Path(__file__).resolve().parents[2]
# The console script of this interpreter's environment, run as a module to be sure of it.
PGBATCH_COMMAND = (sys.executable, "-m", "pgbatch.cli")
# Batches in flight per worker process. A no-op handler needs few: the database is the work.
WORKER_CONCURRENCY = 2


def require_worker_runtime() -> None:
    if not worker_runtime_available():
        raise Skip("the worker runtime (pgbatch.worker) is not in this checkout yet")


def _case(ctx: Context, key: str, label: str, consumers: Consumers) -> Case:
    return Case(
        key,
        label,
        "msg/s",
        lambda: drain_fresh_backlog(ctx.dsn, consumers, ctx.sizes.messages).rate,
    )


def _plural(processes: int) -> str:
    return f"{processes} process{'es' if processes > 1 else ''}"


def _limits(ctx: Context, scenario_key: str) -> list[Case]:
    """Limit (b) with 1 and 2 clients, rerun in this scenario's rounds; none without pgbench."""
    if find_pgbench() is None:
        return []
    return [lease_case(ctx, f"{scenario_key}.limit.c{n}", n) for n in (1, 2)]


def _versus_limit(
    label: str, subject: str, scenario_key: str, processes: int, target: float | None = None
) -> Comparison:
    clients = f"{processes} client{'s' * (processes > 1)}"
    return Comparison(
        f"{label} vs PostgreSQL alone, {clients}",
        subject,
        f"{scenario_key}.limit.c{processes}",
        target,
    )


@scenario("drain-core", "Drain with the core API: dequeue_many(100) + archive_many loop")
def drain_core(ctx: Context, result: ScenarioResult) -> None:
    cores = [
        _case(
            ctx,
            f"drain.core.b100.p{n}",
            f"core loop, batch 100, {_plural(n)}",
            Consumers("core-drain", processes=n, batch_size=100),
        )
        for n in (1, 2)
    ]
    ctx.rounds(result, [*_limits(ctx, "drain.core"), *cores])
    result.comparisons += [
        _versus_limit(f"core loop, {_plural(n)}", f"drain.core.b100.p{n}", "drain.core", n)
        for n in (1, 2)
    ]
    result.notes.append(
        f"{ctx.sizes.messages:,} ready messages per run, timed from the start signal to the"
        " last process's return (interpreter start-up excluded)."
    )


def cli_drain_rate(dsn: str, messages: int, processes: int, batch_size: int) -> float:
    """Messages/s of ``pgbatch worker --until-empty``, timed from launch to exit."""
    with db.fresh_schema(dsn, "drain") as schema:
        db.fill_backlog(dsn, schema, db.create_bench_queue(dsn, schema), messages, packs=True)
        command = [
            *PGBATCH_COMMAND,
            "worker",
            "benchmarks.apps:drain_app",
            "--dsn",
            dsn,
            "--processes",
            str(processes),
            "--batch-size",
            str(batch_size),
            "--until-empty",
        ]
        env = {**os.environ, "PGBATCH_BENCH_SCHEMA": schema, "PYTHONPATH": str(ROOT)}
        with stopwatch() as elapsed:
            done = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
            )
        if done.returncode != 0:
            raise RuntimeError(f"pgbatch worker exited {done.returncode}: {done.stderr[-2000:]}")
        archived = db.count(dsn, schema, "archive")
    if archived != messages:
        raise RuntimeError(f"pgbatch worker archived {archived} of {messages}")
    return messages / elapsed()


WORKER_CASES = (
    # (batch size, processes)
    (100, 1),
    (100, 2),
    (1000, 2),
    ("auto", 2),
)


@scenario("drain-worker", "Drain with worker processes (App.run_worker, no-op batch handler)")
def drain_worker(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    workers = [
        _case(
            ctx,
            f"drain.worker.b{size}.p{n}",
            f"worker, batch {size}, {_plural(n)}",
            Consumers("worker-drain", processes=n, batch_size=size, concurrency=WORKER_CONCURRENCY),
        )
        for size, n in WORKER_CASES
    ]
    # The handler above is a plain function, which the worker runs in a thread; the same
    # no-op as a coroutine runs on the event loop: the difference is the thread hand-off.
    on_loop = _case(
        ctx,
        "drain.worker.b100.p2.async",
        "worker, batch 100, 2 processes, async no-op handler",
        Consumers(
            "worker-drain",
            processes=2,
            batch_size=100,
            concurrency=WORKER_CONCURRENCY,
            extra={"handler": "noop_async"},
        ),
    )
    command = Case(
        "drain.cli.b100.p2",
        "pgbatch worker command, batch 100, 2 processes (incl. start-up)",
        "msg/s",
        lambda: cli_drain_rate(ctx.dsn, ctx.sizes.messages, 2, 100),
    )
    ctx.rounds(result, [*_limits(ctx, "drain.worker"), *workers, on_loop, command])
    result.comparisons += [
        _versus_limit(
            f"worker, batch {size}, {_plural(n)}",
            f"drain.worker.b{size}.p{n}",
            "drain.worker",
            n,
            1.0 if (size, n) == (100, 2) else None,
        )
        for size, n in WORKER_CASES
    ]
    result.comparisons.append(
        _versus_limit(
            "worker, batch 100, 2 processes, async no-op handler",
            "drain.worker.b100.p2.async",
            "drain.worker",
            2,
        )
    )
    result.comparisons.append(
        _versus_limit("pgbatch worker command", "drain.cli.b100.p2", "drain.worker", 2)
    )
    result.notes.append(
        f"Each process: App.run_worker(until_empty=True, concurrency={WORKER_CONCURRENCY}),"
        " the no-op handler a plain function (run in the worker's threads) but in the async"
        " case, a coroutine (run on the event loop);"
        " timed from the start signal (after imports, before the worker connects) to the last"
        " process's return. The `pgbatch worker` command (supervisor + 2 children, its default"
        " concurrency) is timed from launch to exit: interpreter start-up included."
    )
