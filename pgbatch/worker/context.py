"""The state one worker process shares between its lanes, lease keeper and services."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgbatch import operations as ops
from pgbatch.db import AsyncDatabase, Database
from pgbatch.models import Message, QueueInfo
from pgbatch.queries import Queries
from pgbatch.worker.adaptive import BatchSizer, BatchSizeSetting
from pgbatch.worker.batch import Settlement
from pgbatch.worker.metrics import WorkerMetrics
from pgbatch.worker.report import Counters
from pgbatch.worker.wakeups import Wakeups

if TYPE_CHECKING:
    from pgbatch.worker.app import HandlerSpec

log = logging.getLogger("pgbatch.worker")


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """run_worker's arguments, checked; plus the hooks the supervisor's child uses."""

    queues: Sequence[str] | None = None
    concurrency: int = 4
    until_empty: bool = False
    batch_size: BatchSizeSetting | None = None
    shutdown_grace: float = 30.0
    install_signal_handlers: bool = True
    publish_queue_depth: bool = False
    on_ready: Callable[[], None] | None = None
    # Called on a second signal instead of the in-process stop (the child exits at once).
    on_hard_stop: Callable[[], None] | None = None
    # A pipe whose end-of-file means "the supervisor is gone: stop gracefully".
    parent_fd: int | None = None


@dataclass(eq=False, slots=True)
class QueueRuntime:
    """One queue this process works on: its handler, settings and batch sizer."""

    spec: HandlerSpec
    info: QueueInfo
    target: ops.Target
    sizer: BatchSizer
    lease_seconds: float

    @property
    def name(self) -> str:
        return self.info.name


@dataclass(eq=False, slots=True)
class Leased:
    """A fetched batch, held by this process until settled or released."""

    queue: QueueRuntime
    messages: list[Message[Any]]
    requested: int
    renew_at: float
    settling: bool = False
    lost_logged: bool = False
    handler_seconds: float = 0.0


@dataclass(eq=False)
class RunContext:
    queries: Queries
    db: AsyncDatabase
    sync_db: Database | None
    executor: ThreadPoolExecutor
    queues: dict[str, QueueRuntime]
    options: WorkerOptions
    wakeups: Wakeups
    metrics: WorkerMetrics
    counters: Counters = field(default_factory=Counters)
    held: set[Leased] = field(default_factory=set)
    fetching: int = 0
    stopping: bool = False
    # Set on a second signal: skip everything that is not needed to exit.
    hard_stop: bool = False
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)

    def request_stop(self) -> None:
        """Stop fetching; lanes finish what they hold."""
        self.stopping = True
        self.stop_event.set()
        self.wakeups.wake_all()

    def hold(self, leased: Leased) -> None:
        self.held.add(leased)

    def let_go(self, leased: Leased) -> None:
        """``leased`` is settled or released: nothing of it is in flight any more."""
        self.held.discard(leased)
        self.after_activity()

    def after_activity(self) -> None:
        # In drain mode an idle lane re-checks whether everything is settled.
        if self.options.until_empty and self.idle():
            self.wakeups.wake_all()

    def idle(self) -> bool:
        return not self.held and self.fetching == 0

    def record(self, leased: Leased, settlement: Settlement) -> None:
        self.counters.record(len(leased.messages), settlement)
        self.metrics.record_batch(leased.queue.name, leased.handler_seconds, settlement)
        log.debug(
            "queue %s: batch of %d in %.3fs: %d archived, %d retried, %d dead-lettered,"
            " %d lease lost",
            leased.queue.name,
            len(leased.messages),
            leased.handler_seconds,
            settlement.archived,
            settlement.retried,
            settlement.dead,
            settlement.lost,
        )
