"""The App: batch handlers registered by queue, and the worker that runs them."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

import pydantic
from psycopg.conninfo import conninfo_to_dict

from pgbatch import errors
from pgbatch.client import DEFAULT_SCHEMA
from pgbatch.models import validate_queue_name, validate_schema_name
from pgbatch.operations import positive_int, seconds
from pgbatch.worker.adaptive import BatchSizeSetting, batch_sizer
from pgbatch.worker.context import WorkerOptions
from pgbatch.worker.report import WorkerReport
from pgbatch.worker.runner import run_worker

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered batch handler and the settings of its queue."""

    queue: str
    func: Callable[..., Any]
    is_async: bool
    batch_size: BatchSizeSetting
    lease_seconds: float | None
    model: type[pydantic.BaseModel] | None
    transactional: bool
    split_on_failure: bool
    max_attempts: int | None

    def queue_settings(self) -> dict[str, Any]:
        """The create_queue arguments this handler sets (others keep their defaults)."""
        settings: dict[str, Any] = {"model": self.model}
        if self.lease_seconds is not None:
            settings["lease_seconds"] = self.lease_seconds
        if self.max_attempts is not None:
            settings["max_attempts"] = self.max_attempts
        return settings


def is_coroutine_function(func: Callable[..., Any]) -> bool:
    call = getattr(func, "__call__", None)  # noqa: B004 - an object with an async __call__
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(call)


# Seconds a worker's statement waits for a lock before it backs off and retries.
DEFAULT_LOCK_TIMEOUT = 5.0


class App:
    """Batch handlers by queue, and the worker that runs them.

    ``dsn`` as in ``pgbatch.connect`` (resolved when a worker starts, not here); ``pool_size``
    caps the worker's connections (default: twice the concurrency plus three).
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        schema: str = DEFAULT_SCHEMA,
        pool_size: int | None = None,
        application_name: str = "pgbatch-worker",
        lock_timeout: float | timedelta | Literal["default"] | None = "default",
        statement_timeout: float | timedelta | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = validate_schema_name(schema)
        self.pool_size = None if pool_size is None else positive_int(pool_size, "pool_size")
        self.application_name = application_name
        # A worker facing a locked table should back off and retry, not hang: by default
        # its statements give up after 5 s waiting for a lock (RetryableDatabaseError),
        # unless the DSN's own options set a lock_timeout.
        self.lock_timeout = lock_timeout
        self.statement_timeout = statement_timeout
        self.handlers: dict[str, HandlerSpec] = {}

    def lock_timeout_for(self, dsn: str) -> float | timedelta | None:
        """The lock timeout to give the worker's connections to ``dsn``."""
        if self.lock_timeout != "default":
            return self.lock_timeout
        options = conninfo_to_dict(dsn).get("options") or ""
        return None if "lock_timeout" in str(options) else DEFAULT_LOCK_TIMEOUT

    def __repr__(self) -> str:
        return f"<pgbatch.App schema={self.schema!r} queues={sorted(self.handlers)}>"

    def batch_handler(
        self,
        queue: str,
        *,
        batch_size: int | Literal["auto"] = 100,
        lease_seconds: float | timedelta | None = None,
        model: type[pydantic.BaseModel] | None = None,
        transactional: bool = False,
        split_on_failure: bool = True,
        max_attempts: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Registers the decorated function (sync or async) as the handler of ``queue``.

        ``lease_seconds`` and ``max_attempts`` are used when the worker creates the queue, and
        the lease also for every dequeue; ``model`` parses each payload into that pydantic
        model; ``transactional`` gives the handler ``batch.conn``, the transaction in which its
        batch is archived; ``split_on_failure`` isolates a poison message by retrying halves.
        """
        validate_queue_name(queue)
        batch_sizer(batch_size)  # validates
        lease = seconds(lease_seconds, "lease_seconds")
        attempts = None if max_attempts is None else positive_int(max_attempts, "max_attempts")

        def register(func: Handler) -> Handler:
            if queue in self.handlers:
                raise errors.ConfigurationError(f"queue {queue!r} already has a batch handler")
            self.handlers[queue] = HandlerSpec(
                queue=queue,
                func=func,
                is_async=is_coroutine_function(func),
                batch_size=batch_size,
                lease_seconds=lease,
                model=model,
                transactional=transactional,
                split_on_failure=split_on_failure,
                max_attempts=attempts,
            )
            return func

        return register

    def run_worker(
        self,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int = 4,
        until_empty: bool = False,
        batch_size: int | Literal["auto"] | None = None,
        shutdown_grace: float = 30.0,
        install_signal_handlers: bool = True,
    ) -> WorkerReport:
        """Runs a worker in this process until stopped (SIGTERM/SIGINT) or, with
        ``until_empty``, until no visible message is left and every taken one is settled.

        Migrates the schema and creates the registered queues that are missing. The first
        signal stops fetching, lets running batches finish within ``shutdown_grace`` seconds
        and hands back fetched batches not started; a second signal stops at once.
        """
        return asyncio.run(
            self.run_worker_async(
                queues,
                concurrency=concurrency,
                until_empty=until_empty,
                batch_size=batch_size,
                shutdown_grace=shutdown_grace,
                install_signal_handlers=install_signal_handlers,
            )
        )

    async def run_worker_async(
        self,
        queues: Sequence[str] | None = None,
        *,
        concurrency: int = 4,
        until_empty: bool = False,
        batch_size: int | Literal["auto"] | None = None,
        shutdown_grace: float = 30.0,
        install_signal_handlers: bool = True,
    ) -> WorkerReport:
        """run_worker on the running event loop."""
        options = WorkerOptions(
            queues=None if queues is None else list(queues),
            concurrency=concurrency,
            until_empty=until_empty,
            batch_size=batch_size,
            shutdown_grace=shutdown_grace,
            install_signal_handlers=install_signal_handlers,
        )
        return await self.run_with_options(options)

    async def run_with_options(self, options: WorkerOptions) -> WorkerReport:
        """The worker with every option, hooks included (the supervisor's child uses them)."""
        return await run_worker(self, options)
