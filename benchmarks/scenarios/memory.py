"""Memory: the peak RSS of one worker process draining a large backlog stays flat.

One worker (batch 100) drains a tenth of the backlog and then, in a fresh schema, all of
it; the RSS is sampled every 0.25 s during the large run. Flat means the peak does not grow
with the message count and the RSS late in the run is no higher than early on.
"""

from __future__ import annotations

from benchmarks.consumers import Consumers, DrainRun, drain_fresh_backlog
from benchmarks.harness import Context, ScenarioResult, log
from benchmarks.scenarios import scenario
from benchmarks.scenarios.drain import require_worker_runtime

CONSUMERS = Consumers("worker-drain", processes=1, batch_size=100, concurrency=2)


def _rss_at(run: DrainRun, fraction: float) -> float:
    """MiB of the sample nearest to ``fraction`` of the run's duration."""
    moment = run.seconds * fraction
    nearest = min(run.rss_samples, key=lambda sample: abs(sample[0] - moment))
    return nearest[1] / 1024


@scenario("memory", "Memory: peak RSS of one worker draining 1,000,000 messages")
def memory(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    large = ctx.sizes.memory_messages
    small = max(1, large // 10)
    small_run = drain_fresh_backlog(ctx.dsn, CONSUMERS, small)
    log(f"{small:,} messages: peak RSS {small_run.peak_rss_kib / 1024:.1f} MiB")
    large_run = drain_fresh_backlog(ctx.dsn, CONSUMERS, large, sample_rss=True)
    log(f"{large:,} messages: peak RSS {large_run.peak_rss_kib / 1024:.1f} MiB")
    for label, run in ((f"{small:,}", small_run), (f"{large:,}", large_run)):
        ctx.record(
            result,
            f"memory.peak.{label}",
            f"peak RSS, draining {label} messages",
            "MiB",
            [run.peak_rss_kib / 1024],
            higher_is_better=False,
        )
    ctx.record(
        result,
        "memory.growth",
        f"peak RSS growth from {small:,} to {large:,}",
        "MiB",
        [(large_run.peak_rss_kib - small_run.peak_rss_kib) / 1024],
        higher_is_better=False,
    )
    ctx.record(
        result,
        "memory.drain_rate",
        f"drain rate over {large:,} messages",
        "msg/s",
        [large_run.rate],
    )
    if large_run.rss_samples:
        result.details["tables"] = [
            {
                "title": f"Memory: RSS of the worker while draining {large:,} (MiB)",
                "columns": ["ready", "10 %", "25 %", "50 %", "75 %", "100 %", "peak"],
                "rows": [
                    [
                        f"{large_run.rss_ready_kib / 1024:.1f}",
                        *(f"{_rss_at(large_run, f):.1f}" for f in (0.1, 0.25, 0.5, 0.75, 1.0)),
                        f"{large_run.peak_rss_kib / 1024:.1f}",
                    ]
                ],
            }
        ]
    result.notes.append("One run (long); one worker process, batch 100, concurrency 2.")
