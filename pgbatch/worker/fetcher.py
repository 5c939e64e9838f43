"""A lane: the loop that keeps one batch running and the next one fetched.

A worker process runs ``concurrency`` lanes. While a lane's handler runs batch N, the lane
has already fetched batch N+1 (prefetch); when N finishes, N+1 starts at once, and the lane
archives N and leases N+2 in one round trip (a pipeline). A lane holds at most one running
and one waiting batch, so fetching stops when every lane is busy (backpressure).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pgbatch import errors
from pgbatch import operations as ops
from pgbatch.db import run_plans_pipelined_async
from pgbatch.worker.backoff import Backoff
from pgbatch.worker.batch import Outcome
from pgbatch.worker.context import Leased, RunContext
from pgbatch.worker.execute import BatchExecutor
from pgbatch.worker.leases import renew_due_at
from pgbatch.worker.settle import settle_plans, settlement

log = logging.getLogger("pgbatch.worker")

# How long a lane that crashed on a bug waits before it starts again.
LANE_RESTART_SECONDS = 1.0


class Lane:
    def __init__(self, ctx: RunContext, executor: BatchExecutor, index: int) -> None:
        self.ctx = ctx
        self.executor = executor
        self.index = index
        self.backoff = Backoff()
        # A fetched batch whose handler has not started: released on shutdown.
        self.waiting: Leased | None = None
        # The background round trip (prefetch, or settle-and-fetch) of this lane.
        self.ahead: asyncio.Task[Leased | None] | None = None

    async def run(self) -> None:
        """Runs batches until the worker stops; a bug in a lane is logged, not fatal."""
        while not self.ctx.stopping:
            try:
                await self.loop()
            except asyncio.CancelledError:
                self.drop_ahead()
                await self.release_waiting()
                raise
            except Exception:
                # Its batches are abandoned: their leases expire and they come back.
                log.exception("worker lane %d crashed; restarting it", self.index)
                self.drop_ahead()
                self.waiting = None
                await asyncio.sleep(LANE_RESTART_SECONDS)

    def drop_ahead(self) -> None:
        if self.ahead is not None:
            self.ahead.cancel()
            self.ahead = None

    async def loop(self) -> None:
        current = await self.next_batch()
        while current is not None:
            if self.ahead is None and self.should_prefetch():
                self.ahead = asyncio.create_task(self.fetch(current.queue.name))
            outcome = await self.execute(current)
            following = await self.ahead if self.ahead is not None else None
            self.ahead = None
            if self.ctx.stopping:
                await self.settle(current, outcome, fetch_from=None)
                await self.release_waiting()
                return
            if following is not None:
                # Start it now; settle this one and fetch the one after in the background.
                self.ahead = asyncio.create_task(
                    self.settle(current, outcome, fetch_from=following.queue.name)
                )
            else:
                following = await self.settle(current, outcome, fetch_from=current.queue.name)
                if following is None:
                    following = await self.next_batch()
            current = following

    def should_prefetch(self) -> bool:
        # While lanes wait idle, the next batch is theirs to fetch and run now, rather than
        # this lane's to hold until its current batch is done.
        return not self.ctx.stopping and self.ctx.wakeups.waiting() == 0

    async def execute(self, leased: Leased) -> Outcome:
        if self.waiting is leased:
            self.waiting = None
        started = time.monotonic()
        outcome = await self.executor.run(leased.queue, leased.messages)
        leased.handler_seconds = time.monotonic() - started
        leased.queue.sizer.observe(len(leased.messages), leased.handler_seconds)
        return outcome

    async def next_batch(self) -> Leased | None:
        """Waits for a queue with work and fetches from it; None once the worker stops."""
        ctx = self.ctx
        while not ctx.stopping:
            queue = ctx.wakeups.claim_idle(self.index)
            if queue is None:
                if ctx.options.until_empty and ctx.idle() and not ctx.wakeups.any_ready():
                    log.info("drained: no visible message left and nothing in flight")
                    ctx.request_stop()
                    return None
                await ctx.wakeups.wait(None)
                continue
            leased = None
            try:
                leased = await self.fetch(queue)
            finally:
                full = leased is not None and len(leased.messages) >= leased.requested
                ctx.wakeups.unclaim(queue, found_full_batch=full)
            if leased is not None:
                return leased
        return None

    async def fetch(self, preferred: str | None) -> Leased | None:
        """Leases a batch from ``preferred`` (or another ready queue); None if none had any."""
        return await self.settle(None, None, fetch_from=preferred)

    async def settle(
        self, done: Leased | None, outcome: Outcome | None, *, fetch_from: str | None
    ) -> Leased | None:
        """Settles ``done`` and leases the next batch in one round trip, retrying through
        database errors with backoff (only a hard stop gives up: the leases then expire)."""
        if done is not None:
            done.settling = True
        while True:
            queue_name = None
            if fetch_from is not None and not self.ctx.stopping:
                queue_name = self.ctx.wakeups.pick(fetch_from, self.index)
            if done is None and queue_name is None:
                return None
            try:
                return await self.round_trip(done, outcome, queue_name)
            except errors.DatabaseError as exc:
                if self.ctx.hard_stop:
                    return None
                delay = self.backoff.next_delay()
                log.warning(
                    "worker lane %d: database error, retrying in %.2fs: %s", self.index, delay, exc
                )
                await asyncio.sleep(delay)

    async def round_trip(
        self, done: Leased | None, outcome: Outcome | None, queue_name: str | None
    ) -> Leased | None:
        ctx = self.ctx
        plans: list[ops.Plan[Any]] = []
        if done is not None and outcome is not None:
            plans = settle_plans(ctx.queries, done.queue, outcome)
        if queue_name is not None:
            queue = ctx.queues[queue_name]
            requested = queue.sizer.size
            generation = ctx.wakeups.generation(queue_name)
            plans.append(
                ops.dequeue_many(
                    ctx.queries,
                    queue.info,
                    requested,
                    lease_seconds=queue.lease_seconds,
                    model=None,
                    done_channel=queue.target.done_channel,
                )
            )
            ctx.fetching += 1
        try:
            async with ctx.db.connection() as conn:
                answers = await run_plans_pipelined_async(conn, plans)
        finally:
            if queue_name is not None:
                ctx.fetching -= 1
        self.backoff.reset()
        if done is not None and outcome is not None:
            self.settled(done, outcome, answers)
        if queue_name is None:
            return None
        return self.leased(queue_name, answers[-1], requested, generation)

    def settled(self, done: Leased, outcome: Outcome, answers: list[Any]) -> None:
        self.ctx.record(done, settlement(done.queue, outcome, answers))
        if outcome.failures:
            self.ctx.wakeups.signal(done.queue.name)  # retries may be visible already
        self.ctx.let_go(done)

    def leased(
        self, queue_name: str, messages: list[Any], requested: int, generation: int
    ) -> Leased | None:
        ctx = self.ctx
        if not messages:
            ctx.wakeups.mark_empty(queue_name, generation)
            ctx.after_activity()
            return None
        queue = ctx.queues[queue_name]
        leased = Leased(queue, messages, requested, renew_due_at(queue.lease_seconds))
        if len(messages) >= requested:
            # Probably more where these came from: bring in another lane. And the queue stays
            # ready: a fetch that ran meanwhile may have found it empty only because this one
            # held a pack it split (the surplus shows at commit, migration 0005).
            ctx.wakeups.signal(queue_name)
        ctx.hold(leased)
        self.waiting = leased
        return leased

    async def release_waiting(self) -> None:
        """Hands back a fetched batch whose handler never started: visible again at once."""
        leased, self.waiting = self.waiting, None
        if leased is None or self.ctx.hard_stop:
            return
        leased.settling = True
        try:
            await asyncio.wait_for(
                self.ctx.db.run(
                    ops.release_many(self.ctx.queries, leased.messages), transaction=False
                ),
                timeout=5.0,
            )
        except (errors.DatabaseError, TimeoutError) as exc:
            log.warning(
                "could not release %d messages (their leases will expire): %s",
                len(leased.messages),
                exc,
            )
        finally:
            self.ctx.let_go(leased)
