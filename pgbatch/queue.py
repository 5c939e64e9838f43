"""Queue handles: the producer and consumer calls on one queue, sync and async.

Both classes are thin: each method runs one plan from ``pgbatch.operations``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import psycopg
import pydantic

from pgbatch import operations as ops
from pgbatch.batching import BatchingSettings
from pgbatch.models import DeadLetter, FailOutcome, Message, QueueInfo, QueueStats

if TYPE_CHECKING:
    from pgbatch.batching import AsyncPending, Pending
    from pgbatch.client import AsyncClient, Client

P = TypeVar("P")

Duration = float | timedelta


class _QueueBase(Generic[P]):
    client: Client | AsyncClient

    def __init__(self, info: QueueInfo, model: type[pydantic.BaseModel] | None) -> None:
        self.info = info
        self.model = model

    def _q(self) -> Any:
        return self.client.queries

    def _target(self) -> ops.Target:
        return ops.Target(self.info.name, self.client.done_channel)

    def _enqueue_plan(
        self,
        payloads: Sequence[Any],
        delay: Duration | None,
        priority: int,
        dedup_keys: Sequence[str | None] | None,
    ) -> ops.Plan[list[int]]:
        return ops.batch_enqueue(
            self._q(),
            self.info,
            payloads,
            model=self.model,
            delay=delay,
            priority=priority,
            dedup_keys=dedup_keys,
            reservoir=self.client.ids,
        )

    @property
    def name(self) -> str:
        return self.info.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.info.name!r}>"


class Queue(_QueueBase[P]):
    """A queue on a sync Client. Get one from ``client.create_queue`` or ``client.queue``."""

    client: Client

    def __init__(
        self, client: Client, info: QueueInfo, model: type[pydantic.BaseModel] | None = None
    ) -> None:
        super().__init__(info, model)
        self.client = client

    def batch_enqueue(
        self,
        payloads: Sequence[Any],
        *,
        delay: Duration | None = None,
        priority: int = 0,
        dedup_keys: Sequence[str | None] | None = None,
        conn: psycopg.Connection[Any] | None = None,
    ) -> list[int]:
        """Writes every payload or none (in ``conn``'s transaction if given); ids in input order."""
        plan = self._enqueue_plan(payloads, delay, priority, dedup_keys)
        return self.client.db.run(
            plan, conn=conn, transaction=ops.enqueue_needs_transaction(dedup_keys)
        )

    def enqueue(
        self,
        payload: Any,
        *,
        delay: Duration | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
        conn: psycopg.Connection[Any] | None = None,
    ) -> int:
        """One message; with a dedup_key already in the queue, the existing id."""
        return self.batch_enqueue(
            [payload],
            delay=delay,
            priority=priority,
            dedup_keys=None if dedup_key is None else [dedup_key],
            conn=conn,
        )[0]

    def dequeue_many(
        self, limit: int, *, lease_seconds: Duration | None = None
    ) -> list[Message[P]]:
        """Leases up to ``limit`` visible messages (FOR UPDATE SKIP LOCKED)."""
        plan = ops.dequeue_many(
            self._q(),
            self.info,
            limit,
            lease_seconds=lease_seconds,
            model=self.model,
            done_channel=self.client.done_channel,
        )
        return self.client.db.run(plan, transaction=False)

    def archive_many(
        self, messages: Sequence[Message[Any]], *, results: Sequence[Any] | None = None
    ) -> list[int]:
        """Archives the messages whose lease the caller still holds; the ids archived."""
        return self.client.db.run(
            ops.archive_many(self._q(), self._target(), messages, results), transaction=False
        )

    def fail_many(
        self,
        messages: Sequence[Message[Any]],
        error: str | Sequence[str],
        *,
        delay: Duration | None = None,
    ) -> FailOutcome:
        """Back to the queue after backoff (or ``delay``), or to the dead letters."""
        return self.client.db.run(
            ops.fail_many(self._q(), self._target(), messages, error, delay=delay),
            transaction=False,
        )

    def extend_lease(
        self, messages: Sequence[Message[Any]], *, seconds: Duration | None = None
    ) -> list[int]:
        """Pushes the lease of the messages still held; the ids extended."""
        lease = seconds if seconds is not None else self.info.lease_seconds
        return self.client.db.run(ops.extend_lease(self._q(), messages, lease), transaction=False)

    def release_many(self, messages: Sequence[Message[Any]]) -> list[int]:
        """Hands back messages never started: visible at once, not counted as an attempt."""
        return self.client.db.run(ops.release_many(self._q(), messages), transaction=False)

    def stats(self) -> QueueStats:
        return self.client.db.run(ops.stats(self._q(), self.info), transaction=False)

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return self.client.db.run(
            ops.dead_letters(self._q(), self.info, limit, self.model), transaction=False
        )

    def requeue_dead(self, ids: Sequence[int] | None = None) -> int:
        """Dead letters back into the queue with attempts reset; how many (all if ids is None)."""
        return self.client.db.run(ops.requeue_dead(self._q(), self.info, ids))

    def purge_dead(self) -> int:
        return self.client.db.run(ops.single_count(self._q().dead_letter_purge, self.info))

    def purge(self) -> int:
        """Removes every message still in the queue; how many."""
        return self.client.db.run(ops.purge_passes(self._q(), self.info.id))

    def submit(self, payload: Any) -> Pending:
        """Transparent batching: one payload, written with others in a coalesced batch_enqueue.

        Thread-safe; returns at once (blocks only while max_pending submits are unflushed).
        A payload that fails its checks raises here, for this caller only.
        """
        return self.client.submitter.submit(self, payload)

    def configure_batching(
        self, *, max_batch: int = 1000, max_delay_ms: float = 5.0, max_pending: int = 100_000
    ) -> None:
        """How this client coalesces submits to this queue: a batch is written when it holds
        max_batch items or its oldest waited max_delay_ms; submit blocks past max_pending."""
        self.client.submitter.configure(
            self.name, BatchingSettings(max_batch, max_delay_ms, max_pending)
        )

    def result(self, message_id: int, *, timeout: float | None = 30.0) -> Any:
        """The result of a message of this queue, however it was enqueued (see Pending.result)."""
        return self.client.results.wait(self.name, message_id, timeout).value()


class AsyncQueue(_QueueBase[P]):
    """The async twin of Queue, on an AsyncClient."""

    client: AsyncClient

    def __init__(
        self, client: AsyncClient, info: QueueInfo, model: type[pydantic.BaseModel] | None = None
    ) -> None:
        super().__init__(info, model)
        self.client = client

    async def batch_enqueue(
        self,
        payloads: Sequence[Any],
        *,
        delay: Duration | None = None,
        priority: int = 0,
        dedup_keys: Sequence[str | None] | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[int]:
        plan = self._enqueue_plan(payloads, delay, priority, dedup_keys)
        return await self.client.db.run(
            plan, conn=conn, transaction=ops.enqueue_needs_transaction(dedup_keys)
        )

    async def enqueue(
        self,
        payload: Any,
        *,
        delay: Duration | None = None,
        dedup_key: str | None = None,
        priority: int = 0,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> int:
        ids = await self.batch_enqueue(
            [payload],
            delay=delay,
            priority=priority,
            dedup_keys=None if dedup_key is None else [dedup_key],
            conn=conn,
        )
        return ids[0]

    async def dequeue_many(
        self, limit: int, *, lease_seconds: Duration | None = None
    ) -> list[Message[P]]:
        plan = ops.dequeue_many(
            self._q(),
            self.info,
            limit,
            lease_seconds=lease_seconds,
            model=self.model,
            done_channel=self.client.done_channel,
        )
        return await self.client.db.run(plan, transaction=False)

    async def archive_many(
        self, messages: Sequence[Message[Any]], *, results: Sequence[Any] | None = None
    ) -> list[int]:
        return await self.client.db.run(
            ops.archive_many(self._q(), self._target(), messages, results), transaction=False
        )

    async def fail_many(
        self,
        messages: Sequence[Message[Any]],
        error: str | Sequence[str],
        *,
        delay: Duration | None = None,
    ) -> FailOutcome:
        return await self.client.db.run(
            ops.fail_many(self._q(), self._target(), messages, error, delay=delay),
            transaction=False,
        )

    async def extend_lease(
        self, messages: Sequence[Message[Any]], *, seconds: Duration | None = None
    ) -> list[int]:
        lease = seconds if seconds is not None else self.info.lease_seconds
        return await self.client.db.run(
            ops.extend_lease(self._q(), messages, lease), transaction=False
        )

    async def release_many(self, messages: Sequence[Message[Any]]) -> list[int]:
        return await self.client.db.run(ops.release_many(self._q(), messages), transaction=False)

    async def stats(self) -> QueueStats:
        return await self.client.db.run(ops.stats(self._q(), self.info), transaction=False)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        return await self.client.db.run(
            ops.dead_letters(self._q(), self.info, limit, self.model), transaction=False
        )

    async def requeue_dead(self, ids: Sequence[int] | None = None) -> int:
        return await self.client.db.run(ops.requeue_dead(self._q(), self.info, ids))

    async def purge_dead(self) -> int:
        return await self.client.db.run(ops.single_count(self._q().dead_letter_purge, self.info))

    async def purge(self) -> int:
        return await self.client.db.run(ops.purge_passes(self._q(), self.info.id))

    async def submit(self, payload: Any) -> AsyncPending:
        """Transparent batching; awaits only while max_pending submits are unflushed."""
        return await self.client.submitter.submit(self, payload)

    def configure_batching(
        self, *, max_batch: int = 1000, max_delay_ms: float = 5.0, max_pending: int = 100_000
    ) -> None:
        self.client.submitter.configure(
            self.name, BatchingSettings(max_batch, max_delay_ms, max_pending)
        )

    async def result(self, message_id: int, *, timeout: float | None = 30.0) -> Any:
        return await self.client.results.wait(self.name, message_id, timeout)
