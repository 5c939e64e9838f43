"""Transparent batching: one call per item for the caller, batch_enqueue for the database.

``queue.submit(payload)`` validates and encodes the payload in the caller's thread (a bad
payload fails only its own caller), appends it to the queue's buffer and returns a Pending.
One flusher per queue and client (two threads, or one task for the async client) writes the
buffer with one batch_enqueue transaction per batch, up to FLUSHES_IN_FLIGHT at a time: when
a batch is full (``max_batch``) or its oldest item has waited ``max_delay_ms``. A failed
transaction hands its error to every Pending of that batch and writes none of them. While
``max_pending`` items are unflushed, submit blocks (or awaits): memory stays bounded.

``SubmitBuffer`` holds the cutting into batches without I/O; ``Submitter`` and
``AsyncSubmitter`` drive it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from pgbatch import errors
from pgbatch import operations as ops
from pgbatch.awaiting import Latch, Outcome, wait_event
from pgbatch.payloads import encode_payloads

if TYPE_CHECKING:
    from pgbatch.client import AsyncClient, Client
    from pgbatch.queue import AsyncQueue, Queue
    from pgbatch.results import AsyncResultTracker, ResultTracker

OutcomeT = TypeVar("OutcomeT")


@dataclass(frozen=True, slots=True)
class BatchingSettings:
    """How one queue's submits are coalesced (see ``Queue.configure_batching``)."""

    max_batch: int = 1000
    max_delay_ms: float = 5.0
    max_pending: int = 100_000

    def __post_init__(self) -> None:
        ops.positive_int(self.max_batch, "max_batch")
        ops.positive_int(self.max_pending, "max_pending")
        ops.seconds(self.max_delay_ms, "max_delay_ms", allow_zero=True)

    @property
    def max_delay(self) -> float:
        return self.max_delay_ms / 1000.0


class Batch(Generic[OutcomeT]):
    """Encoded payloads written together, and where their ids (or the error) will be."""

    __slots__ = ("opened_at", "outcome", "payloads", "waiter_indexes", "waiters", "written")

    def __init__(self, opened_at: float, outcome: OutcomeT) -> None:
        self.opened_at = opened_at
        self.outcome = outcome
        self.payloads: list[bytes] = []
        # Result waiters (latches or futures) that came before the commit, by index in the
        # batch; the flusher registers them with the result tracker once the ids are known.
        # Two lists rather than pairs: with 100,000 callers waiting, every small object counts.
        self.waiter_indexes: list[int] = []
        self.waiters: list[Any] = []
        self.written = False


class SubmitBuffer(Generic[OutcomeT]):
    """The unflushed submits of one queue, cut into batches (no I/O, no locking)."""

    def __init__(self, settings: BatchingSettings, new_outcome: Callable[[], OutcomeT]) -> None:
        self.settings = settings
        self._new_outcome = new_outcome
        self._sealed: deque[Batch[OutcomeT]] = deque()
        self._open: Batch[OutcomeT] | None = None
        # Items submitted and not yet written, counting the batch being written.
        self.unflushed = 0

    @property
    def full(self) -> bool:
        return self.unflushed >= self.settings.max_pending

    def configure(self, settings: BatchingSettings) -> None:
        """New settings, for what is buffered too: an open batch that already holds the new
        max_batch is sealed whole (written at once, not split)."""
        self.settings = settings
        batch = self._open
        if batch is not None and len(batch.payloads) >= settings.max_batch:
            self._sealed.append(batch)
            self._open = None

    def add(self, payload: bytes, now: float) -> tuple[Batch[OutcomeT], int, bool]:
        """Appends a payload: its batch, its index there, and whether to wake the flusher."""
        batch = self._open
        opened = batch is None
        if batch is None:
            batch = self._open = Batch(now, self._new_outcome())
        batch.payloads.append(payload)
        self.unflushed += 1
        sealed = len(batch.payloads) >= self.settings.max_batch
        if sealed:
            self._sealed.append(batch)
            self._open = None
        return batch, len(batch.payloads) - 1, opened or sealed

    def take(self, now: float, *, everything: bool = False) -> Batch[OutcomeT] | None:
        """The next batch due (a full one, or the open one once it waited max_delay_ms)."""
        if self._sealed:
            return self._sealed.popleft()
        batch = self._open
        if batch is not None and (everything or now - batch.opened_at >= self.settings.max_delay):
            self._open = None
            return batch
        return None

    def wait_time(self, now: float) -> float | None:
        """Seconds until a batch is due; None when nothing is pending."""
        if self._sealed:
            return 0.0
        if self._open is None:
            return None
        return max(0.0, self._open.opened_at + self.settings.max_delay - now)

    def written(self, batch: Batch[OutcomeT]) -> None:
        self.unflushed -= len(batch.payloads)


# Each queue's flusher keeps up to this many batch_enqueue transactions in flight, so that one
# batch is sent while the previous one commits.
FLUSHES_IN_FLIGHT = 2


def encode_submit(payload: Any, queue: Queue[Any] | AsyncQueue[Any]) -> bytes:
    """The payload checked and encoded, in the caller's thread; PayloadError if it is bad."""
    if queue.model is None:
        # The common case without the batch machinery; anything that might fail a check
        # (a null that could be NaN, an escaped NUL, the size) takes the full path below.
        try:
            data = orjson.dumps(payload)
        except TypeError:
            pass
        else:
            if (
                b"null" not in data
                and b"\\u0000" not in data
                and len(data) <= queue.info.max_payload_bytes
            ):
                # A copy: orjson's bytes sit in a larger malloc block; thousands of them held
                # in the buffer fragment the C heap until each dumps() costs ten times more.
                return bytes(memoryview(data))
    return encode_payloads([payload], model=queue.model, max_bytes=queue.info.max_payload_bytes)[0]


def enqueue_plan(
    client: Client | AsyncClient, queue: Queue[Any] | AsyncQueue[Any], payloads: Sequence[bytes]
) -> ops.Plan[list[int]]:
    """batch_enqueue of payloads encoded at submit (orjson passes Fragments through)."""
    return ops.batch_enqueue(
        client.queries,
        queue.info,
        [orjson.Fragment(p) for p in payloads],
        model=None,
        delay=None,
        priority=0,
        dedup_keys=None,
        reservoir=client.ids,
    )


def fresh_error(exc: BaseException) -> BaseException:
    """A copy of ``exc`` for one more caller, so callers do not share one traceback."""
    try:
        copy = type(exc)(*exc.args)
    except TypeError:
        return exc
    copy.__cause__ = exc.__cause__
    return copy


def _closed() -> errors.ClientClosed:
    return errors.ClientClosed("the client is closed: submit no more")


# ---------------------------------------------------------------- sync


IdsOrError = list[int] | BaseException


class Pending:
    """One submitted payload: its message id once the enqueue committed, then its outcome."""

    __slots__ = ("_batch", "_index", "_lock", "_outcome", "_queue", "_results")

    def __init__(
        self,
        batch: Batch[Latch[IdsOrError]],
        index: int,
        queue: str,
        results: ResultTracker,
        lock: threading.Lock,
    ) -> None:
        self._batch = batch
        self._index = index
        self._queue = queue
        self._results = results
        self._lock = lock  # the batcher's, guarding batch.waiters
        self._outcome: Outcome | None = None

    def id(self, timeout: float | None = 5.0) -> int:
        """The message id, once its batch_enqueue committed; TimeoutError, or its error."""
        latch = self._batch.outcome
        if not latch.wait(timeout):
            raise TimeoutError(f"the enqueue of this submit did not commit within {timeout} s")
        ids = latch.value
        if isinstance(ids, BaseException):
            raise fresh_error(ids)
        return ids[self._index]

    def result(self, timeout: float | None = 30.0) -> Any:
        """The handler's result (None if it gave none) once a worker archived the message.

        JobFailed if it went to the dead letters; TimeoutError after ``timeout`` seconds.
        """
        if self._outcome is None:
            self._outcome = self._wait(timeout)
        return self._outcome.value()

    def _wait(self, timeout: float | None) -> Outcome:
        latch: Latch[Outcome | BaseException] = Latch()
        batch = self._batch
        with self._lock:
            registered_by_flusher = not batch.written
            if registered_by_flusher:
                batch.waiter_indexes.append(self._index)
                batch.waiters.append(latch)
        if not registered_by_flusher:
            return self._results.wait(self._queue, self.id(0), timeout)
        if not latch.wait(timeout):
            latch.abandoned = True
            if batch.outcome.is_set() and not isinstance(batch.outcome.value, BaseException):
                self._results.forget(batch.outcome.value[self._index], latch)
            if not latch.is_set():
                raise TimeoutError(f"no outcome for this submit within {timeout} s")
        value = latch.value
        if isinstance(value, BaseException):
            raise value
        return value


class Batcher:
    """The buffer and flusher threads of one queue on a sync client."""

    def __init__(
        self,
        write: Callable[[list[bytes]], list[int]],
        results: ResultTracker,
        settings: BatchingSettings,
        name: str,
    ) -> None:
        self._write = write
        self._results = results
        self._name = name
        self.lock = lock = threading.Lock()
        self._due = threading.Condition(lock)  # the flusher waits here for a batch
        self._space = threading.Condition(lock)  # submitters wait here while full
        self._buffer: SubmitBuffer[Latch[IdsOrError]] = SubmitBuffer(settings, Latch)
        self._threads: list[threading.Thread] = []
        self._closing = False

    def configure(self, settings: BatchingSettings) -> None:
        with self._due:
            self._buffer.configure(settings)
            self._due.notify()  # the open batch's deadline may have moved, or it was sealed
            self._space.notify_all()

    def add(self, payload: bytes) -> tuple[Batch[Latch[IdsOrError]], int]:
        with self._due:
            while self._buffer.full and not self._closing:
                self._space.wait()
            if self._closing:
                raise _closed()
            batch, index, wake = self._buffer.add(payload, time.monotonic())
            if not self._threads:
                self._start()
            elif wake:
                self._due.notify()
        return batch, index

    def _start(self) -> None:
        for number in range(FLUSHES_IN_FLIGHT):
            thread = threading.Thread(
                target=self._run, name=f"pgbatch-flusher-{self._name}-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Writes everything still buffered, then stops the flusher."""
        with self._due:
            self._closing = True
            self._due.notify_all()
            self._space.notify_all()
        for thread in self._threads:
            thread.join()

    def _run(self) -> None:
        while True:
            with self._due:
                batch = self._next_batch()
            if batch is None:
                return
            self._flush(batch)
            with self._due:
                self._buffer.written(batch)
                self._space.notify_all()
                self._due.notify()  # a batch may have become due meanwhile

    def _next_batch(self) -> Batch[Latch[IdsOrError]] | None:
        """Waits (holding the lock) until a batch is due; None once closing and empty."""
        while True:
            now = time.monotonic()
            batch = self._buffer.take(now, everything=self._closing)
            if batch is not None or self._closing:
                return batch
            self._due.wait(self._buffer.wait_time(now))

    def _flush(self, batch: Batch[Latch[IdsOrError]]) -> None:
        try:
            ids: IdsOrError = self._write(batch.payloads)
        except Exception as exc:  # every pending of the batch gets the error
            ids = exc
        with self._due:
            batch.written = True
            indexes, waiters = batch.waiter_indexes, batch.waiters
            batch.waiter_indexes, batch.waiters = [], []
        batch.outcome.set(ids)
        if isinstance(ids, BaseException):
            for latch in waiters:
                latch.set(fresh_error(ids))
        elif waiters:
            self._results.expect(self._name, [ids[i] for i in indexes], waiters)


class Submitter:
    """A sync client's batchers, one per queue, created by the first submit."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._batchers: dict[str, Batcher] = {}
        self._settings: dict[str, BatchingSettings] = {}
        self._closed = False

    def configure(self, queue: str, settings: BatchingSettings) -> None:
        with self._lock:
            self._settings[queue] = settings
            batcher = self._batchers.get(queue)
        if batcher is not None:
            batcher.configure(settings)

    def submit(self, queue: Queue[Any], payload: Any) -> Pending:
        encoded = encode_submit(payload, queue)
        batcher = self._batcher(queue)
        batch, index = batcher.add(encoded)
        return Pending(batch, index, queue.name, self._client.results, batcher.lock)

    def _batcher(self, queue: Queue[Any]) -> Batcher:
        batcher = self._batchers.get(queue.name)
        if batcher is not None:
            return batcher
        with self._lock:
            if self._closed:
                raise _closed()
            batcher = self._batchers.get(queue.name)
            if batcher is None:
                settings = self._settings.get(queue.name, BatchingSettings())
                batcher = Batcher(self._writer(queue), self._client.results, settings, queue.name)
                self._batchers[queue.name] = batcher
        return batcher

    def _writer(self, queue: Queue[Any]) -> Callable[[list[bytes]], list[int]]:
        client = self._client

        def write(payloads: list[bytes]) -> list[int]:
            return client.db.run(enqueue_plan(client, queue, payloads), transaction=False)

        return write

    def close(self) -> None:
        """Flushes every queue's buffer; later submits raise ClientClosed."""
        with self._lock:
            self._closed = True
            batchers = list(self._batchers.values())
        for batcher in batchers:
            batcher.close()


# ---------------------------------------------------------------- async


class AsyncPending:
    """The async twin of Pending: ``await pending.id()``, ``await pending.result()``."""

    __slots__ = ("_batch", "_index", "_queue", "_result", "_results")

    def __init__(
        self,
        batch: Batch[asyncio.Future[list[int]]],
        index: int,
        queue: str,
        results: AsyncResultTracker,
    ) -> None:
        self._batch = batch
        self._index = index
        self._queue = queue
        self._results = results
        self._result: asyncio.Future[Any] | None = None

    async def id(self, timeout: float | None = 5.0) -> int:
        """The message id, once its batch_enqueue committed; TimeoutError, or its error."""
        future = self._batch.outcome
        if not future.done():
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(future)  # the future is shared by the whole batch
            except TimeoutError:
                raise TimeoutError(
                    f"the enqueue of this submit did not commit within {timeout} s"
                ) from None
        return self._id_now()

    def _id_now(self) -> int:
        error = self._batch.outcome.exception()
        if error is not None:
            raise fresh_error(error)
        return self._batch.outcome.result()[self._index]

    def result(self, timeout: float | None = 30.0) -> asyncio.Future[Any]:
        """``await pending.result()``: the handler's result once a worker archived the message.

        JobFailed if it went to the dead letters; TimeoutError after ``timeout`` seconds. A
        plain future rather than a coroutine: no frame per waiting caller.
        """
        future = self._result
        if future is not None and future.done() and not _ended_early(future):
            return future
        future = self._result = self._results.deadlines.new_future(timeout)
        batch = self._batch
        if not batch.outcome.done():
            # The flusher registers it with the tracker right after the commit.
            batch.waiter_indexes.append(self._index)
            batch.waiters.append(future)
        elif (error := batch.outcome.exception()) is not None:
            future.set_exception(fresh_error(error))
        else:
            self._results.expect(self._queue, [batch.outcome.result()[self._index]], [future])
        return future


def _ended_early(future: asyncio.Future[Any]) -> bool:
    """Cancelled or timed out: a new result() call waits again."""
    return future.cancelled() or isinstance(future.exception(), TimeoutError)


class AsyncBatcher:
    """The buffer and flusher task of one queue on an async client."""

    def __init__(
        self,
        write: Callable[[list[bytes]], Awaitable[list[int]]],
        results: AsyncResultTracker,
        settings: BatchingSettings,
        name: str,
    ) -> None:
        self._write = write
        self._results = results
        self._name = name
        self._buffer: SubmitBuffer[asyncio.Future[list[int]]] = SubmitBuffer(
            settings, self._new_future
        )
        self._wake = asyncio.Event()
        self._space = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writing = 0  # batches being written
        self._closing = False

    @staticmethod
    def _new_future() -> asyncio.Future[list[int]]:
        return asyncio.get_running_loop().create_future()

    def configure(self, settings: BatchingSettings) -> None:
        self._buffer.configure(settings)
        self._wake.set()  # the open batch's deadline may have moved, or it was sealed
        self._space.set()

    def add_nowait(self, payload: bytes) -> AsyncPending | None:
        """The Pending of a payload added to the buffer; None while the buffer is full."""
        if self._closing:
            raise _closed()
        if self._buffer.full:
            return None
        batch, index, wake = self._buffer.add(payload, asyncio.get_running_loop().time())
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"pgbatch-flusher-{self._name}")
        elif wake:
            self._wake.set()
        return AsyncPending(batch, index, self._name, self._results)

    async def add(self, payload: bytes) -> AsyncPending:
        """As add_nowait, awaiting room first (backpressure)."""
        while (pending := self.add_nowait(payload)) is None:
            self._space.clear()
            await self._space.wait()  # set after each write
        return pending

    async def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._space.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        """Starts a write for each due batch, at most FLUSHES_IN_FLIGHT at a time."""
        loop = asyncio.get_running_loop()
        tasks: set[asyncio.Task[None]] = set()  # a reference keeps each task alive
        while True:
            now = loop.time()
            batch = None
            if self._writing < FLUSHES_IN_FLIGHT:
                batch = self._buffer.take(now, everything=self._closing)
            if batch is not None:
                self._writing += 1
                task = asyncio.create_task(self._flush(batch))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                continue
            wait_time = self._buffer.wait_time(now)
            if self._closing and not self._writing and wait_time is None:
                return
            self._wake.clear()
            await wait_event(self._wake, None if self._writing >= FLUSHES_IN_FLIGHT else wait_time)

    async def _flush(self, batch: Batch[asyncio.Future[list[int]]]) -> None:
        try:
            ids = await self._write(batch.payloads)
        except Exception as exc:  # every pending of the batch gets the error
            batch.outcome.set_exception(exc)
            batch.outcome.exception()  # marks it retrieved: no "never retrieved" warning
            for future in batch.waiters:
                if not future.done():
                    future.set_exception(fresh_error(exc))
        else:
            batch.outcome.set_result(ids)
            if batch.waiters:
                self._results.expect(
                    self._name, [ids[i] for i in batch.waiter_indexes], batch.waiters
                )
        finally:
            batch.written = True
            batch.waiter_indexes = []
            batch.waiters = []
            self._buffer.written(batch)
            self._writing -= 1
            self._space.set()
            self._wake.set()


class AsyncSubmitter:
    """An async client's batchers, one per queue, created by the first submit."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._batchers: dict[str, AsyncBatcher] = {}
        self._settings: dict[str, BatchingSettings] = {}
        self._closed = False

    def configure(self, queue: str, settings: BatchingSettings) -> None:
        self._settings[queue] = settings
        batcher = self._batchers.get(queue)
        if batcher is not None:
            batcher.configure(settings)

    async def submit(self, queue: AsyncQueue[Any], payload: Any) -> AsyncPending:
        encoded = encode_submit(payload, queue)
        batcher = self._batcher(queue)
        pending = batcher.add_nowait(encoded)
        return pending if pending is not None else await batcher.add(encoded)

    def _batcher(self, queue: AsyncQueue[Any]) -> AsyncBatcher:
        batcher = self._batchers.get(queue.name)
        if batcher is None:
            if self._closed:
                raise _closed()
            client = self._client

            async def write(payloads: list[bytes]) -> list[int]:
                return await client.db.run(enqueue_plan(client, queue, payloads), transaction=False)

            settings = self._settings.get(queue.name, BatchingSettings())
            batcher = AsyncBatcher(write, client.results, settings, queue.name)
            self._batchers[queue.name] = batcher
        return batcher

    async def close(self) -> None:
        self._closed = True
        for batcher in list(self._batchers.values()):
            await batcher.close()
