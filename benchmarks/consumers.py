"""Draining a ready backlog with consumer processes, measured from the start signal.

Shared by the drain, slow I/O, churn and memory scenarios.
"""

from __future__ import annotations

import contextlib
import importlib.util
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pgbatch
from benchmarks import database as db
from benchmarks.processes import Children, RssSampler


def worker_runtime_available() -> bool:
    """Whether the worker runtime (``pgbatch.App``) exists in this checkout yet."""
    try:
        return importlib.util.find_spec("pgbatch.worker.app") is not None
    except ModuleNotFoundError:
        return False


@dataclass(frozen=True, slots=True)
class Consumers:
    """``processes`` children of ``mode`` with the same settings."""

    mode: str  # a benchmarks.child mode
    processes: int = 1
    batch_size: int | str = 100
    concurrency: int = 1
    extra: dict[str, Any] = field(default_factory=dict)

    def configs(self, dsn: str, schema: str) -> list[dict[str, Any]]:
        base = {
            "dsn": dsn,
            "schema": schema,
            "queue": db.QUEUE_NAME,
            "batch_size": self.batch_size,
            "concurrency": self.concurrency,
            **self.extra,
        }
        return [dict(base) for _ in range(self.processes)]


@dataclass(frozen=True, slots=True)
class DrainRun:
    messages: int
    seconds: float  # from the start signal to the last consumer's return
    peak_rss_kib: int  # the largest child's peak
    rss_ready_kib: int  # the largest child's RSS before it started work
    rss_samples: list[tuple[float, int]]  # (seconds since start, KiB of all children)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def drain(
    dsn: str,
    schema: str,
    consumers: Consumers,
    expected: int,
    *,
    sample_rss: bool = False,
    timeout: float = 900.0,
) -> DrainRun:
    """Runs the consumers over the schema's backlog; checks every message was archived."""
    archived_before = db.count(dsn, schema, "archive")
    with Children(consumers.mode, consumers.configs(dsn, schema), timeout=timeout) as group:
        sampler = RssSampler(group.pids) if sample_rss else None
        if sampler:
            sampler.start()
        start = group.go()
        results = group.results()
        if sampler:
            sampler.stop()
    archived = db.count(dsn, schema, "archive") - archived_before
    done = sum(int(r["messages"]) for r in results)
    if archived != expected or done != expected:
        raise RuntimeError(f"drain archived {archived} (handled {done}) of {expected} messages")
    return DrainRun(
        messages=expected,
        seconds=max(float(r["end"]) for r in results) - start,
        peak_rss_kib=max(int(r["peak_rss_kib"]) for r in results),
        rss_ready_kib=max(int(r["rss_ready_kib"]) for r in results),
        rss_samples=[(t - start, kib) for t, kib in sampler.samples] if sampler else [],
    )


def drain_fresh_backlog(
    dsn: str,
    consumers: Consumers,
    messages: int,
    *,
    sample_rss: bool = False,
    **queue_settings: Any,
) -> DrainRun:
    """A fresh schema with ``messages`` ready, drained by ``consumers``."""
    with db.fresh_schema(dsn, "drain") as schema:
        queue_id = db.create_bench_queue(dsn, schema, **queue_settings)
        db.fill_backlog(dsn, schema, queue_id, messages, packs=True)
        run = drain(dsn, schema, consumers, messages, sample_rss=sample_rss)
        left = db.count(dsn, schema, "queued")
    if left:
        raise RuntimeError(f"drain left {left} messages in the queue")
    return run


@dataclass(slots=True)
class Serving:
    """Idle workers started by ``serving_worker``; ``results`` once they have stopped."""

    group: Children
    startup_seconds: float  # start signal to the warm-up message archived
    results: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def serving_worker(
    dsn: str, schema: str, consumers: Consumers, watcher: db.ArchiveWatcher
) -> Iterator[Serving]:
    """Idle ``worker-serve`` processes, listening before the caller's work starts.

    A warm-up message (archived, so it counts in the archive) is enqueued and awaited first.
    On leaving the block the workers get SIGTERM and their results are collected.
    """
    with Children("worker-serve", consumers.configs(dsn, schema)) as group:
        start = group.go()
        with pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client:
            client.queue(db.QUEUE_NAME).enqueue({"warm_up": True})
        serving = Serving(group, watcher.wait_for(1, timeout=60) - start)
        yield serving
        group.signal(signal.SIGTERM)
        serving.results = group.results()
