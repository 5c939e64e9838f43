"""Clients: a pool of connections to one pgbatch schema, and the queues in it.

``connect(dsn)`` gives a sync Client, ``connect_async(dsn)`` an AsyncClient; both resolve the
DSN the same way: the argument, else PGBATCH_DSN, else DATABASE_URL, else the embedded server.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import psycopg
import pydantic

from pgbatch import operations as ops
from pgbatch.batching import AsyncSubmitter, Submitter
from pgbatch.db import AsyncDatabase, Database, translated_errors
from pgbatch.dsn import describe_dsn, resolve_dsn
from pgbatch.ids import IdReservoir
from pgbatch.migrate import migrate as apply_migrations
from pgbatch.models import QueueInfo, validate_queue_name, validate_schema_name
from pgbatch.queries import Queries, queries_for
from pgbatch.queue import AsyncQueue, Queue
from pgbatch.results import AsyncResultTracker, ResultTracker

DEFAULT_SCHEMA = "pgbatch"
Model = type[pydantic.BaseModel] | None


def wake_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel on which enqueues wake workers of this schema."""
    return f"pgbatch_{schema}"


def done_channel(schema: str) -> str:
    """The channel on which archives and dead letters wake producers awaiting results."""
    return f"pgbatch_{schema}_done"


def _queue_defaults(
    lease_seconds: float | timedelta | None,
    max_attempts: int | None,
    backoff_base: float | timedelta | None,
    backoff_max: float | timedelta | None,
    max_payload_bytes: int | None,
) -> dict[str, Any]:
    return ops.queue_settings(
        lease_seconds=lease_seconds,
        max_attempts=max_attempts,
        backoff_base=backoff_base,
        backoff_max=backoff_max,
        max_payload_bytes=max_payload_bytes,
    )


class _ClientBase:
    def __init__(self, dsn: str | None, schema: str) -> None:
        self.dsn = resolve_dsn(dsn)
        self.schema = validate_schema_name(schema)
        self.queries: Queries = queries_for(schema)
        self.channel = wake_channel(schema)
        self.done_channel = done_channel(schema)
        # Ids reserved ahead for batch_enqueue, shared by this client's queues and threads.
        self.ids = IdReservoir()


def migrate_with_new_connection(dsn: str, schema: str) -> list[int]:
    with translated_errors(describe_dsn(dsn)), psycopg.connect(dsn, autocommit=True) as conn:
        return apply_migrations(conn, schema)


class Client(_ClientBase):
    """A sync client. Use as a context manager, or call ``close()``."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "pgbatch",
        timeout: float = 10.0,
        lock_timeout: float | timedelta | None = None,
        statement_timeout: float | timedelta | None = None,
    ) -> None:
        super().__init__(dsn, schema)
        self.db = Database(
            self.dsn,
            min_size=min_size,
            max_size=max_size,
            application_name=application_name,
            timeout=timeout,
            # Server-side limits per statement: waiting on a lock (a migration, a LOCK TABLE)
            # fails fast with RetryableDatabaseError instead of stalling the caller.
            lock_timeout=ops.seconds(lock_timeout, "lock_timeout"),
            statement_timeout=ops.seconds(statement_timeout, "statement_timeout"),
        )
        # Transparent batching (queue.submit) and result waits; threads start on first use.
        self.submitter = Submitter(self)
        self.results = ResultTracker(self)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Writes what was submitted and not yet flushed, then closes every connection."""
        self.submitter.close()
        self.results.close()
        self.db.close()

    def migrate(self) -> list[int]:
        """Applies pending migrations under an advisory lock; the versions applied."""
        with self.db.connection() as conn:
            return apply_migrations(conn, self.schema)

    def create_queue(
        self,
        name: str,
        *,
        lease_seconds: float | timedelta = 30,
        max_attempts: int = 5,
        backoff_base: float | timedelta = 1,
        backoff_max: float | timedelta = 600,
        max_payload_bytes: int = 1 << 20,
        model: Model = None,
    ) -> Queue[Any]:
        """Creates the queue if it does not exist (an existing one keeps its settings)."""
        settings = _queue_defaults(
            lease_seconds, max_attempts, backoff_base, backoff_max, max_payload_bytes
        )
        info = self.db.run(ops.create_queue(self.queries, validate_queue_name(name), settings))
        return Queue(self, info, model)

    def queue(self, name: str, *, model: Model = None) -> Queue[Any]:
        """The existing queue ``name``; QueueNotFound if there is none."""
        info = self.db.run(
            ops.get_queue(self.queries, validate_queue_name(name)), transaction=False
        )
        return Queue(self, info, model)

    def queues(self) -> list[QueueInfo]:
        return self.db.run(ops.list_queues(self.queries), transaction=False)

    def pause_queue(self, name: str) -> None:
        """A paused queue accepts messages but hands none out."""
        self.db.run(ops.set_paused(self.queries, validate_queue_name(name), True, self.channel))

    def resume_queue(self, name: str) -> None:
        self.db.run(ops.set_paused(self.queries, validate_queue_name(name), False, self.channel))

    def update_queue(
        self,
        name: str,
        *,
        lease_seconds: float | timedelta | None = None,
        max_attempts: int | None = None,
        backoff_base: float | timedelta | None = None,
        backoff_max: float | timedelta | None = None,
        max_payload_bytes: int | None = None,
    ) -> QueueInfo:
        """Changes the settings given (the others stay); the queue's settings now."""
        settings = _queue_defaults(
            lease_seconds, max_attempts, backoff_base, backoff_max, max_payload_bytes
        )
        return self.db.run(ops.update_queue(self.queries, validate_queue_name(name), settings))

    def drop_queue(self, name: str) -> None:
        """Deletes the queue with its messages, dead letters and archive."""
        self.db.run(ops.drop_queue(self.queries, validate_queue_name(name)))


class AsyncClient(_ClientBase):
    """The async twin of Client: ``async with pgbatch.connect_async(dsn) as client``."""

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        min_size: int = 1,
        max_size: int = 10,
        application_name: str = "pgbatch",
        timeout: float = 10.0,
        lock_timeout: float | timedelta | None = None,
        statement_timeout: float | timedelta | None = None,
    ) -> None:
        super().__init__(dsn, schema)
        self.db = AsyncDatabase(
            self.dsn,
            min_size=min_size,
            max_size=max_size,
            application_name=application_name,
            timeout=timeout,
            # Server-side limits per statement: waiting on a lock (a migration, a LOCK TABLE)
            # fails fast with RetryableDatabaseError instead of stalling the caller.
            lock_timeout=ops.seconds(lock_timeout, "lock_timeout"),
            statement_timeout=ops.seconds(statement_timeout, "statement_timeout"),
        )
        # Transparent batching (queue.submit) and result waits; tasks start on first use.
        self.submitter = AsyncSubmitter(self)
        self.results = AsyncResultTracker(self)

    async def open(self) -> Self:
        await self.db.open()
        return self

    def __await__(self) -> Any:
        return self.open().__await__()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.submitter.close()
        await self.results.close()
        await self.db.close()

    async def migrate(self) -> list[int]:
        # Migrations are rare and short: a sync connection in a thread keeps one migrator.
        return await asyncio.to_thread(migrate_with_new_connection, self.dsn, self.schema)

    async def create_queue(
        self,
        name: str,
        *,
        lease_seconds: float | timedelta = 30,
        max_attempts: int = 5,
        backoff_base: float | timedelta = 1,
        backoff_max: float | timedelta = 600,
        max_payload_bytes: int = 1 << 20,
        model: Model = None,
    ) -> AsyncQueue[Any]:
        settings = _queue_defaults(
            lease_seconds, max_attempts, backoff_base, backoff_max, max_payload_bytes
        )
        info = await self.db.run(
            ops.create_queue(self.queries, validate_queue_name(name), settings)
        )
        return AsyncQueue(self, info, model)

    async def queue(self, name: str, *, model: Model = None) -> AsyncQueue[Any]:
        info = await self.db.run(
            ops.get_queue(self.queries, validate_queue_name(name)), transaction=False
        )
        return AsyncQueue(self, info, model)

    async def queues(self) -> list[QueueInfo]:
        return await self.db.run(ops.list_queues(self.queries), transaction=False)

    async def pause_queue(self, name: str) -> None:
        await self.db.run(
            ops.set_paused(self.queries, validate_queue_name(name), True, self.channel)
        )

    async def resume_queue(self, name: str) -> None:
        await self.db.run(
            ops.set_paused(self.queries, validate_queue_name(name), False, self.channel)
        )

    async def update_queue(
        self,
        name: str,
        *,
        lease_seconds: float | timedelta | None = None,
        max_attempts: int | None = None,
        backoff_base: float | timedelta | None = None,
        backoff_max: float | timedelta | None = None,
        max_payload_bytes: int | None = None,
    ) -> QueueInfo:
        settings = _queue_defaults(
            lease_seconds, max_attempts, backoff_base, backoff_max, max_payload_bytes
        )
        return await self.db.run(
            ops.update_queue(self.queries, validate_queue_name(name), settings)
        )

    async def drop_queue(self, name: str) -> None:
        await self.db.run(ops.drop_queue(self.queries, validate_queue_name(name)))


def connect(dsn: str | None = None, **options: Any) -> Client:
    """A sync Client (a psycopg ConnectionPool inside). Options: see Client."""
    return Client(dsn, **options)


def connect_async(dsn: str | None = None, **options: Any) -> AsyncClient:
    """An AsyncClient; open it with ``async with`` or ``await``."""
    return AsyncClient(dsn, **options)
