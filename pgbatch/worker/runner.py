"""The asyncio core of one worker process: start, run the lanes, stop cleanly.

start: resolve the DSN, migrate, create the registered queues, open the pool (and a sync
pool when a sync handler is transactional) -> run: ``concurrency`` lanes, the lease keeper,
the registry heartbeat, the listener and the poller -> stop: on a signal (or, in drain mode,
once drained) lanes stop fetching and finish within the grace period; a second signal, or the
end of the grace period, abandons what still runs (its leases expire).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from pgbatch import errors
from pgbatch import operations as ops
from pgbatch.client import AsyncClient, Client
from pgbatch.dsn import resolve_dsn
from pgbatch.worker.adaptive import batch_sizer
from pgbatch.worker.backoff import jittered
from pgbatch.worker.context import QueueRuntime, RunContext, WorkerOptions
from pgbatch.worker.execute import BatchExecutor
from pgbatch.worker.fetcher import Lane
from pgbatch.worker.leases import LeaseKeeper
from pgbatch.worker.listener import Listener, poll
from pgbatch.worker.metrics import worker_metrics
from pgbatch.worker.registry import WorkerRegistry
from pgbatch.worker.report import WorkerReport
from pgbatch.worker.upkeep import upkeep
from pgbatch.worker.wakeups import Wakeups

if TYPE_CHECKING:
    from pgbatch.worker.app import App, HandlerSpec

log = logging.getLogger("pgbatch.worker")

DEPTH_SECONDS = 10.0


def check_options(options: WorkerOptions) -> None:
    ops.positive_int(options.concurrency, "concurrency")
    if options.batch_size is not None:
        batch_sizer(options.batch_size)
    ops.seconds(options.shutdown_grace, "shutdown_grace", allow_zero=True)


def select_handlers(app: App, queues: Sequence[str] | None) -> list[HandlerSpec]:
    if not app.handlers:
        raise errors.ConfigurationError("the app has no batch handlers: nothing to run")
    if queues is None:
        return list(app.handlers.values())
    unknown = sorted(set(queues) - set(app.handlers))
    if unknown:
        raise errors.ConfigurationError(
            f"no batch handler for queue(s) {', '.join(map(repr, unknown))}; the app handles"
            f" {', '.join(map(repr, sorted(app.handlers)))}"
        )
    return [app.handlers[name] for name in dict.fromkeys(queues)]


async def run_worker(app: App, options: WorkerOptions) -> WorkerReport:
    check_options(options)
    specs = select_handlers(app, options.queues)
    dsn = await asyncio.to_thread(resolve_dsn, app.dsn)  # may start the embedded server
    max_size = app.pool_size or 2 * options.concurrency + 3
    client = AsyncClient(
        dsn,
        schema=app.schema,
        min_size=min(max_size, options.concurrency + 1),
        max_size=max_size,
        application_name=app.application_name,
        lock_timeout=app.lock_timeout_for(dsn),
        statement_timeout=app.statement_timeout,
    )
    await client.open()
    sync_client: Client | None = None
    executor = ThreadPoolExecutor(options.concurrency, thread_name_prefix="pgbatch-handler")
    try:
        await client.migrate()
        queues = {spec.queue: await create_queue(client, spec, options) for spec in specs}
        if any(s.transactional and not s.is_async for s in specs):
            sync_client = await asyncio.to_thread(
                Client,
                dsn,
                schema=app.schema,
                max_size=app.pool_size or options.concurrency,
                application_name=app.application_name,
                lock_timeout=app.lock_timeout_for(dsn),
                statement_timeout=app.statement_timeout,
            )
        ctx = RunContext(
            queries=client.queries,
            db=client.db,
            sync_db=None if sync_client is None else sync_client.db,
            executor=executor,
            queues=queues,
            options=options,
            wakeups=Wakeups(list(queues)),
            metrics=worker_metrics(),
        )
        listener = None
        if not options.until_empty:
            listener = Listener(
                dsn, client.channel, f"{app.application_name}-listener", ctx.wakeups
            )
        return await Runner(ctx, listener).run()
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        if sync_client is not None:
            await asyncio.to_thread(sync_client.close)
        await client.close()


async def create_queue(
    client: AsyncClient, spec: HandlerSpec, options: WorkerOptions
) -> QueueRuntime:
    queue = await client.create_queue(spec.queue, **spec.queue_settings())
    setting = options.batch_size if options.batch_size is not None else spec.batch_size
    return QueueRuntime(
        spec=spec,
        info=queue.info,
        target=ops.Target(queue.info.name, client.done_channel),
        sizer=batch_sizer(setting),
        lease_seconds=spec.lease_seconds or queue.info.lease_seconds,
    )


class Runner:
    def __init__(self, ctx: RunContext, listener: Listener | None) -> None:
        self.ctx = ctx
        self.listener = listener
        self.registry = WorkerRegistry(ctx.db, ctx.queries, list(ctx.queues), ctx.counters)
        self.hard_stop_event = asyncio.Event()
        # The handlers the application had before, restored when the worker returns.
        self.previous_handlers: dict[signal.Signals, Any] = {}

    async def run(self) -> WorkerReport:
        ctx = self.ctx
        await self.first_beat()
        self.install_stop_triggers()
        log.info(
            "worker %s started: queues %s, concurrency %d",
            self.registry.identity.id,
            ", ".join(ctx.queues),
            ctx.options.concurrency,
        )
        if ctx.options.on_ready is not None:
            ctx.options.on_ready()  # before any handler runs: a handler may kill the process
        executor = BatchExecutor(ctx)
        lanes = [
            asyncio.create_task(Lane(ctx, executor, i).run(), name=f"pgbatch-lane-{i}")
            for i in range(ctx.options.concurrency)
        ]
        services = [asyncio.create_task(c) for c in self.service_coroutines()]
        try:
            await self.until_stopped(lanes)
        finally:
            ctx.request_stop()
            for task in [*lanes, *services]:
                task.cancel()
            await asyncio.gather(*lanes, *services, return_exceptions=True)
            self.remove_stop_triggers()
            if not ctx.hard_stop:
                await self.registry.sign_off()
        report = ctx.counters.report()
        log.info(
            "worker %s stopped: %d batches, %d archived, %d failed, %d dead-lettered,"
            " %d lease losses in %.1fs",
            self.registry.identity.id,
            report.batches,
            report.archived,
            report.failed,
            report.dead_lettered,
            report.lease_losses,
            report.seconds,
        )
        return report

    def service_coroutines(self) -> list[Any]:
        ctx = self.ctx
        coroutines: list[Any] = [LeaseKeeper(ctx).run(), self.registry.run(), upkeep(ctx)]
        if self.listener is not None:
            coroutines += [self.listener.run(), poll(ctx.wakeups, self.listener)]
        if ctx.options.publish_queue_depth:
            coroutines.append(publish_depth(ctx))
        return coroutines

    async def first_beat(self) -> None:
        try:
            await self.registry.beat()
        except errors.DatabaseError as exc:
            log.warning("could not register the worker (will retry): %s", exc)

    async def until_stopped(self, lanes: list[asyncio.Task[None]]) -> None:
        """Waits for a stop, then up to the grace period for the lanes to finish."""
        ctx = self.ctx
        stop = asyncio.create_task(ctx.stop_event.wait())
        hard = asyncio.create_task(self.hard_stop_event.wait())
        try:
            await asyncio.wait([stop, *lanes], return_when=asyncio.FIRST_COMPLETED)
            ctx.request_stop()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + ctx.options.shutdown_grace
            pending = {t for t in lanes if not t.done()}
            while pending and not ctx.hard_stop and loop.time() < deadline:
                await asyncio.wait(
                    [*pending, hard],
                    timeout=deadline - loop.time(),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                pending = {t for t in lanes if not t.done()}
            if pending and not ctx.hard_stop:
                log.warning(
                    "%d batch(es) still running after the %.0fs grace period: abandoning them"
                    " (their leases will expire)",
                    len(pending),
                    ctx.options.shutdown_grace,
                )
        finally:
            stop.cancel()
            hard.cancel()

    def on_signal(self, name: str) -> None:
        if not self.ctx.stopping:
            log.info(
                "%s: stopping; finishing running batches (grace %.0fs), signal again to stop"
                " at once",
                name,
                self.ctx.options.shutdown_grace,
            )
            self.ctx.request_stop()
        else:
            log.warning("%s again: stopping at once", name)
            if self.ctx.options.on_hard_stop is not None:
                self.ctx.options.on_hard_stop()
            self.ctx.hard_stop = True
            self.hard_stop_event.set()

    def install_stop_triggers(self) -> None:
        loop = asyncio.get_running_loop()
        if self.ctx.options.install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    previous = signal.getsignal(sig)
                    loop.add_signal_handler(sig, self.on_signal, sig.name)
                    self.previous_handlers[sig] = previous
                except (ValueError, RuntimeError, NotImplementedError):
                    log.debug("cannot install a %s handler outside the main thread", sig.name)
        fd = self.ctx.options.parent_fd
        if fd is not None:
            loop.add_reader(fd, self.on_parent_fd, fd)

    def on_parent_fd(self, fd: int) -> None:
        if os.read(fd, 64):
            return
        asyncio.get_running_loop().remove_reader(fd)
        if not self.ctx.stopping:
            log.warning("the supervisor is gone: stopping")
            self.ctx.request_stop()

    def remove_stop_triggers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig, previous in self.previous_handlers.items():
            loop.remove_signal_handler(sig)
            if previous is not None:
                signal.signal(sig, previous)
        if self.ctx.options.parent_fd is not None:
            loop.remove_reader(self.ctx.options.parent_fd)


async def publish_depth(ctx: RunContext) -> None:
    """Keeps the queue depth gauge current (one process of a supervised group does this)."""
    names = list(ctx.queues)
    while True:
        try:
            depths = await ctx.db.run(ops.queue_depths(ctx.queries, names), transaction=False)
            for name, ready in depths.items():
                ctx.metrics.set_depth(name, ready)
        except errors.DatabaseError as exc:
            log.debug("queue depth not updated: %s", exc)
        await asyncio.sleep(jittered(DEPTH_SECONDS, 0.1))
