"""Lease renewal: one statement, about every third of a lease, for every batch in flight.

A batch is due a third of its lease after it was fetched (or last renewed); the keeper
renews every due batch of the process in one statement, fenced by lease token. A batch
whose lease turns out lost is logged here once; it will not be archived (the archive is
fenced too) and its settle counts the loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from pgbatch import errors
from pgbatch import operations as ops
from pgbatch.db import run_plan_async, translated_errors
from pgbatch.models import Message
from pgbatch.worker.backoff import Backoff
from pgbatch.worker.context import Leased, RunContext

log = logging.getLogger("pgbatch.worker.leases")

RENEW_FRACTION = 1 / 3


def renew_due_at(lease_seconds: float) -> float:
    return time.monotonic() + lease_seconds * RENEW_FRACTION


class LeaseKeeper:
    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        shortest = min((q.lease_seconds for q in ctx.queues.values()), default=30.0)
        # Wake often enough to renew the shortest lease on time, without spinning.
        self.tick = min(1.0, max(0.02, shortest * RENEW_FRACTION / 4))
        self.backoff = Backoff(initial=self.tick, maximum=5.0)
        self.conn: psycopg.AsyncConnection[Any] | None = None

    async def run(self) -> None:
        try:
            while True:
                due = self.due_batches()
                delay = self.tick
                if due:
                    try:
                        await self.renew(due)
                        self.backoff.reset()
                    except errors.DatabaseError as exc:
                        await self.drop_connection()
                        delay = self.backoff.next_delay()
                        log.warning("lease renewal failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
        finally:
            await self.drop_connection()

    async def connection(self) -> psycopg.AsyncConnection[Any]:
        """The keeper's own connection: renewal must not queue behind busy lanes for a pooled
        one (with a small pool, transactional handlers can hold every connection)."""
        if self.conn is None or self.conn.closed:
            db = self.ctx.db
            with translated_errors(db.target):
                self.conn = await psycopg.AsyncConnection.connect(db.dsn, **db.connect_kwargs)
        return self.conn

    async def drop_connection(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(psycopg.Error):
                await self.conn.close()
            self.conn = None

    def due_batches(self) -> list[Leased]:
        now = time.monotonic()
        return [b for b in self.ctx.held if not b.settling and b.renew_at <= now]

    async def renew(self, due: Sequence[Leased]) -> None:
        messages: list[Message[Any]] = []
        lengths: list[float] = []
        for batch in due:
            messages.extend(batch.messages)
            lengths.extend([batch.queue.lease_seconds] * len(batch.messages))
        conn = await self.connection()
        with translated_errors(self.ctx.db.target):
            held = await run_plan_async(conn, ops.renew_leases(self.ctx.queries, messages, lengths))
        for batch in due:
            batch.renew_at = renew_due_at(batch.queue.lease_seconds)
            self.check_lost(batch, held)
        log.debug("renewed the leases of %d batches (%d messages)", len(due), len(messages))

    def check_lost(self, batch: Leased, held: set[int]) -> None:
        if batch.settling or batch.lost_logged or batch not in self.ctx.held:
            return  # settled meanwhile: its rows are gone, not lost
        lost = [m.id for m in batch.messages if m.id not in held]
        if lost:
            batch.lost_logged = True
            log.warning(
                "queue %s: lease lost on %d of %d messages of a running batch (first id %d):"
                " another consumer may take them; this worker will not archive them",
                batch.queue.name,
                len(lost),
                len(batch.messages),
                lost[0],
            )
