"""Waiting on many outcomes at once: the bookkeeping under pgbatch.results, without I/O.

``AwaitedIds`` knows which message ids this process awaits and what to query next;
``Latch`` is what a thread waits on, ``Deadlines`` times out many futures with few timers.
Each is shaped by one fact: 100,000 callers may wait at the same moment, so per-waiter cost
(and every small object the garbage collector has to walk) counts.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Generic, NamedTuple, TypeVar

import orjson

from pgbatch import errors

T = TypeVar("T")
W = TypeVar("W")

# Ids are grouped in buckets of this many consecutive ids; a bucket holding at least
# DENSE_BUCKET awaited ids is read as a range, the ids of sparser ones one by one.
BUCKET = 64
DENSE_BUCKET = 4


class Outcome(NamedTuple):
    """What became of one message: archived (with the handler's result) or dead-lettered."""

    message_id: int
    dead: bool
    result_json: str | None
    last_error: str | None

    def value(self) -> Any:
        """The handler's result (None if it gave none); JobFailed for a dead letter."""
        if self.dead:
            raise errors.JobFailed(self.message_id, self.last_error)
        return None if self.result_json is None else orjson.loads(self.result_json)


Row = tuple[int, bool, str | None, str | None]


class Latch(Generic[T]):
    """A value set once that threads wait for: one lock, cheaper than an Event."""

    __slots__ = ("_is_set", "_lock", "_value", "abandoned")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._is_set = False
        self.abandoned = False  # its waiter gave up (timed out)

    def set(self, value: T) -> None:
        """Sets the value and releases every waiter; call it at most once."""
        self._value = value
        self._is_set = True
        self._lock.release()

    def is_set(self) -> bool:
        return self._is_set

    def wait(self, timeout: float | None) -> bool:
        """True once set; False after ``timeout`` seconds (None: no limit)."""
        if self._is_set:
            return True
        if self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            self._lock.release()  # pass it on to the next waiter
        return self._is_set

    @property
    def value(self) -> T:
        return self._value


class _Several(list[W]):
    """Two or more waiters of one message id; a single waiter is stored as itself (100,000
    awaited ids would otherwise cost 100,000 one-item lists for the garbage collector)."""


class AwaitedIds(Generic[W]):
    """The message ids this process awaits, by queue, and which are due for a check (no I/O).

    Ids sit in buckets of BUCKET consecutive ids, so a check of a queue costs one range per
    dense run rather than one lookup per id, and finding what to check is cheap even with
    100,000 awaited ids.
    """

    def __init__(self) -> None:
        self._waiters: dict[int, W | _Several[W]] = {}
        self._queue_of: dict[int, str] = {}
        self._buckets: dict[str, dict[int, set[int]]] = {}
        self._notified: set[str] = set()
        self._registered: dict[str, set[int]] = {}
        self._check_all = False

    def __len__(self) -> int:
        return len(self._waiters)

    def add_many(self, queue: str, message_ids: Iterable[int], waiters: Iterable[W]) -> None:
        """Awaits each message id with its waiter; they are due for a check."""
        buckets = self._buckets.setdefault(queue, {})
        registered = self._registered.setdefault(queue, set())
        for message_id, waiter in zip(message_ids, waiters, strict=True):
            entry = self._waiters.get(message_id)
            if entry is not None:
                if isinstance(entry, _Several):
                    entry.append(waiter)
                else:
                    self._waiters[message_id] = _Several((entry, waiter))
                continue
            self._waiters[message_id] = waiter
            self._queue_of[message_id] = queue
            key = message_id // BUCKET
            bucket = buckets.get(key)
            if bucket is None:
                bucket = buckets[key] = set()
            bucket.add(message_id)
            registered.add(key)

    def add(self, queue: str, message_id: int, waiter: W) -> None:
        """Awaits ``message_id``; it is due for a check (its outcome may already be there)."""
        self.add_many(queue, (message_id,), (waiter,))

    def discard(self, message_id: int, waiter: W) -> None:
        """Stops awaiting for this waiter (it timed out)."""
        entry = self._waiters.get(message_id)
        if entry is waiter:
            self._forget(message_id)
        elif isinstance(entry, _Several) and waiter in entry:
            entry.remove(waiter)
            if not entry:
                self._forget(message_id)

    def prune(self, finished: Callable[[W], bool]) -> None:
        """Drops the waiters that ``finished`` says no longer wait."""
        for message_id, entry in list(self._waiters.items()):
            for waiter in list(_each(entry)):
                if finished(waiter):
                    self.discard(message_id, waiter)

    def _forget(self, message_id: int) -> None:
        del self._waiters[message_id]
        buckets = self._buckets[self._queue_of.pop(message_id)]
        bucket = buckets[message_id // BUCKET]
        bucket.discard(message_id)
        if not bucket:
            del buckets[message_id // BUCKET]

    def queues(self) -> list[str]:
        """The queues with messages awaited."""
        return [queue for queue, buckets in self._buckets.items() if buckets]

    def notified(self, queue: str) -> None:
        """Something of ``queue`` was archived or dead-lettered."""
        if queue in self._buckets:
            self._notified.add(queue)

    def check_all(self) -> None:
        """Everything is due: a poll, or a listener that was (re)connected."""
        self._check_all = True

    def urgent(self) -> bool:
        """Due because of a notification or a full check, not only new waiters."""
        return self._check_all or bool(self._notified)

    def take_due(self) -> tuple[list[int], list[int], list[int]]:
        """What to query now, as (range lows, range highs, single ids); resets what is due."""
        due: list[tuple[str, int]] = []
        for queue, buckets in self._buckets.items():
            if self._check_all or queue in self._notified:
                due.extend((queue, key) for key in buckets)
            else:
                registered = self._registered.get(queue, ())
                due.extend((queue, key) for key in registered if key in buckets)
        self._notified.clear()
        self._registered.clear()
        self._check_all = False
        return self._spans(due)

    def _spans(self, due: Iterable[tuple[str, int]]) -> tuple[list[int], list[int], list[int]]:
        lows: list[int] = []
        highs: list[int] = []
        singles: list[int] = []
        for key, ids in sorted(
            ((key, self._buckets[queue][key]) for queue, key in due), key=lambda item: item[0]
        ):
            if len(ids) < DENSE_BUCKET:
                singles.extend(ids)
            elif highs and highs[-1] == key * BUCKET - 1:
                highs[-1] = key * BUCKET + BUCKET - 1  # adjacent dense buckets: one range
            elif not highs or highs[-1] < key * BUCKET:
                lows.append(key * BUCKET)
                highs.append(key * BUCKET + BUCKET - 1)
        return lows, highs, singles

    def resolve(self, rows: Iterable[Row]) -> list[tuple[W, Outcome]]:
        """The waiters of the awaited ids among the outcome ``rows``; they stop being awaited."""
        resolved: list[tuple[W, Outcome]] = []
        waiters = self._waiters
        for row in rows:
            entry = waiters.get(row[0])
            if entry is None:
                continue  # a neighbour in a range, or already resolved
            self._forget(row[0])
            outcome = Outcome(*row)
            resolved.extend((waiter, outcome) for waiter in _each(entry))
        return resolved

    def clear(self) -> list[W]:
        """Every waiter, which stop being awaited (the client closes)."""
        waiters = [w for entry in self._waiters.values() for w in _each(entry)]
        self._waiters.clear()
        self._queue_of.clear()
        self._buckets.clear()
        self._notified.clear()
        self._registered.clear()
        return waiters


def _each(entry: W | _Several[W]) -> list[W]:
    return entry if isinstance(entry, _Several) else [entry]


class _Expiring:
    """Futures waiting with one timeout value, oldest first, so their deadlines ascend."""

    __slots__ = ("compact_at", "deadlines", "futures", "timer")

    def __init__(self) -> None:
        self.deadlines: deque[float] = deque()
        self.futures: deque[asyncio.Future[Any]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.compact_at = 1024


class Deadlines:
    """Timeouts for many futures without a timer handle each.

    A timer per waiting future costs about as much as the rest of a submit; here the futures
    of one timeout value wait in a FIFO with one timer for its oldest. Futures that finished
    early are dropped in bulk whenever a FIFO has doubled since it was last swept.
    """

    def __init__(self) -> None:
        self._fifos: dict[float, _Expiring] = {}

    def new_future(self, timeout: float | None) -> asyncio.Future[Any]:
        """A future that fails with TimeoutError unless it is done within ``timeout`` s."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if timeout is None:
            return future
        fifo = self._fifos.get(timeout)
        if fifo is None:
            fifo = self._fifos[timeout] = _Expiring()
        fifo.deadlines.append(loop.time() + timeout)
        fifo.futures.append(future)
        if fifo.timer is None:
            fifo.timer = loop.call_at(fifo.deadlines[0], self._expire, timeout)
        elif len(fifo.futures) >= fifo.compact_at:
            self._sweep(fifo)
        return future

    def _expire(self, timeout: float) -> None:
        fifo = self._fifos[timeout]
        loop = asyncio.get_running_loop()
        now = loop.time()
        while fifo.deadlines and fifo.deadlines[0] <= now:
            fifo.deadlines.popleft()
            future = fifo.futures.popleft()
            if not future.done():
                future.set_exception(TimeoutError(f"no outcome within {timeout} s"))
        fifo.timer = (
            loop.call_at(fifo.deadlines[0], self._expire, timeout) if fifo.deadlines else None
        )

    @staticmethod
    def _sweep(fifo: _Expiring) -> None:
        deadlines: deque[float] = deque()
        futures: deque[asyncio.Future[Any]] = deque()
        for deadline, future in zip(fifo.deadlines, fifo.futures, strict=True):
            if not future.done():
                deadlines.append(deadline)
                futures.append(future)
        fifo.deadlines, fifo.futures = deadlines, futures
        fifo.compact_at = max(1024, 2 * len(futures))

    def cancel(self) -> None:
        for fifo in self._fifos.values():
            if fifo.timer is not None:
                fifo.timer.cancel()
        self._fifos.clear()


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """True if ``event`` was set within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


class PollSchedule:
    """When the next poll of every awaited id is due: a fixed time after the previous one.

    Wake-ups for new waiters check only the new ids, so a poll that waited for a quiet
    moment never came under steady traffic, and older ids went unchecked while the listener
    was down. The deadline holds however often the checker wakes in between.
    """

    def __init__(self, now: float) -> None:
        self._polled_at = now

    def wait_time(self, now: float, interval: float) -> float:
        """Seconds until the next poll, ``interval`` seconds after the previous one."""
        return max(0.0, self._polled_at + interval - now)

    def due(self, now: float, interval: float) -> bool:
        """Whether a poll is due now; if so, it counts as done from ``now``."""
        if now - self._polled_at < interval:
            return False
        self._polled_at = now
        return True


class Interest:
    """When to tell the database again that results of a queue are awaited: archives notify
    for INTEREST_SECONDS after each declaration, renewed well before that runs out."""

    SECONDS = 60.0
    RENEW_AFTER = 20.0

    def __init__(self) -> None:
        self._declared: dict[str, float] = {}

    def due(self, queues: Iterable[str], now: float) -> list[str]:
        return [q for q in queues if now - self._declared.get(q, -self.SECONDS) >= self.RENEW_AFTER]

    def declared(self, queues: Iterable[str], now: float) -> None:
        for queue in queues:
            self._declared[queue] = now
