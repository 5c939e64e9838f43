"""Prometheus metrics of the worker (prometheus-client).

In a supervised run with ``--metrics-port``, each worker process writes its metrics to the
multiprocess directory (``PROMETHEUS_MULTIPROC_DIR``, set by the supervisor) and the supervisor
serves the sum of all processes on the one port. In an in-process ``run_worker`` the metrics
live in prometheus-client's default registry, for the application to expose as it likes.
Updates happen once per batch, never per message.
"""

from __future__ import annotations

from functools import cache

from pgbatch.worker.batch import Settlement

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class WorkerMetrics:
    """The worker's metric families, labelled by queue."""

    def __init__(self) -> None:
        # Imported here: ``import pgbatch`` should not pay for it.
        from prometheus_client import Counter, Gauge, Histogram

        self.archived = Counter(
            "pgbatch_messages_archived", "Messages archived by workers", ["queue"]
        )
        self.failed = Counter(
            "pgbatch_messages_failed",
            "Message failures recorded by workers (retried or dead-lettered)",
            ["queue"],
        )
        self.dead_lettered = Counter(
            "pgbatch_messages_dead_lettered",
            "Messages that workers moved to the dead letters",
            ["queue"],
        )
        self.lease_losses = Counter(
            "pgbatch_lease_losses",
            "Messages a worker could not settle because its lease was lost",
            ["queue"],
        )
        self.batch_duration = Histogram(
            "pgbatch_batch_duration_seconds",
            "Time a batch handler took, per batch",
            ["queue"],
            buckets=_BUCKETS,
        )
        self.queue_depth = Gauge(
            "pgbatch_queue_depth",
            "Visible messages waiting in the queue",
            ["queue"],
            multiprocess_mode="mostrecent",
        )

    def record_batch(self, queue: str, seconds: float, settlement: Settlement) -> None:
        self.batch_duration.labels(queue).observe(seconds)
        if settlement.archived:
            self.archived.labels(queue).inc(settlement.archived)
        if settlement.retried or settlement.dead:
            self.failed.labels(queue).inc(settlement.retried + settlement.dead)
        if settlement.dead:
            self.dead_lettered.labels(queue).inc(settlement.dead)
        if settlement.lost:
            self.lease_losses.labels(queue).inc(settlement.lost)

    def set_depth(self, queue: str, ready: int) -> None:
        self.queue_depth.labels(queue).set(ready)


@cache
def worker_metrics() -> WorkerMetrics:
    """The process's metrics (registered once in the default registry)."""
    return WorkerMetrics()
