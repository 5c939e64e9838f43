"""Waiting for message outcomes: the producer's side of ``batch.complete(msg, value)``.

Each client has one tracker, started by the first wait. A dedicated connection LISTENs on
the client's done channel, where every statement that archived or dead-lettered messages
notifies once with the queue's name, while some client awaits results of that queue (the
checker keeps queue.results_awaited_until in the future). Each wake-up runs one query for
the awaited ids of the queues that notified (and for ids registered since the last check,
which may already be done), however many messages the notification stands for. While the
listener is down (it reconnects with backoff), a poll of every awaited id every
POLL_WHILE_DEAF seconds takes its place; while it listens, the same poll runs every
POLL_WHILE_LISTENING seconds as a safety net.

The bookkeeping (``pgbatch.awaiting``) has no I/O; ``ResultTracker`` drives it with two
threads, ``AsyncResultTracker`` with two tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgbatch import errors
from pgbatch.awaiting import (
    AwaitedIds,
    Deadlines,
    Interest,
    Latch,
    Outcome,
    PollSchedule,
    Row,
    wait_event,
)
from pgbatch.db import translated_errors
from pgbatch.operations import Plan, Statement
from pgbatch.queries import Queries

if TYPE_CHECKING:
    from pgbatch.client import AsyncClient, Client

log = logging.getLogger(__name__)

# The listener's connections carry this name (pg_stat_activity.application_name).
LISTENER_APPLICATION_NAME = "pgbatch-results"
# Seconds between polls of every awaited id, counted from the previous poll whatever wakes the
# checker in between: while the listener is down, and as a safety net while it listens.
POLL_WHILE_DEAF = 0.5
POLL_WHILE_LISTENING = 5.0
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0
# How often a sync listener looks up from its socket to notice close().
LISTEN_TICK = 1.0
# A check due only to new waiters waits this long for a notification to ride along with:
# a submit's message was just enqueued, its outcome is almost never there yet.
REGISTRATION_DELAY = 0.02


def find_outcomes(q: Queries, lows: list[int], highs: list[int], ids: list[int]) -> Plan[list[Row]]:
    """Outcome rows for the id ranges [lows[i], highs[i]] and the single ids."""
    rows = yield Statement(q.result_find_many, {"lows": lows, "highs": highs, "ids": ids})
    return rows


def declare_interest(q: Queries, queues: list[str]) -> Plan[None]:
    """Archives of these queues notify the done channel for the next Interest.SECONDS."""
    yield Statement(q.queue_await_results, {"names": queues, "seconds": Interest.SECONDS})


def wake_listener(q: Queries, channel: str) -> Plan[None]:
    """An empty notification, so that a closing listener returns without waiting its tick."""
    yield Statement(q.notify_queue, {"channel": channel, "payload": ""})


def listen_statement(channel: str) -> sql.Composed:
    return sql.SQL("LISTEN {}").format(sql.Identifier(channel))


def reconnect_delay(previous: float) -> float:
    """Exponential backoff with jitter between listener reconnects."""
    return min(RECONNECT_MAX, max(RECONNECT_MIN, previous * 2)) * random.uniform(0.5, 1.0)


def _timeout_error(message_id: int, timeout: float | None) -> TimeoutError:
    return TimeoutError(f"no outcome for message {message_id} within {timeout} s")


def _closed_error() -> errors.ClientClosed:
    return errors.ClientClosed("the client was closed while waiting for a result")


class ResultTracker:
    """Outcomes for a sync Client: a listener thread and a checker thread, started lazily."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._awaited: AwaitedIds[Latch[Outcome | BaseException]] = AwaitedIds()
        self._wake = threading.Event()  # anything due
        self._urgent = threading.Event()  # a notification, a poll, a reconnect, close()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.listening = False
        self._interest = Interest()

    def wait(self, queue: str, message_id: int, timeout: float | None) -> Outcome:
        """The outcome of ``message_id``; TimeoutError after ``timeout`` seconds."""
        latch: Latch[Outcome | BaseException] = Latch()
        with self._lock:
            if self._closed:
                raise _closed_error()
            if not self._threads:
                self._start()
            self._awaited.add(queue, message_id, latch)
        self._wake.set()
        if not latch.wait(timeout):
            with self._lock:
                self._awaited.discard(message_id, latch)
            if not latch.is_set():
                raise _timeout_error(message_id, timeout)
        value = latch.value
        if isinstance(value, BaseException):
            raise value
        return value

    def expect(
        self,
        queue: str,
        message_ids: Sequence[int],
        latches: Sequence[Latch[Outcome | BaseException]],
    ) -> None:
        """Sets each latch to the outcome of its message (or ClientClosed)."""
        with self._lock:
            closed = self._closed
            if not closed:
                if not self._threads:
                    self._start()
                if any(latch.abandoned for latch in latches):
                    pairs = list(zip(message_ids, latches, strict=True))
                    message_ids = [i for i, x in pairs if not x.abandoned]
                    latches = [x for _, x in pairs if not x.abandoned]
                self._awaited.add_many(queue, message_ids, latches)
        if closed:
            for latch in latches:
                latch.set(_closed_error())
        self._wake.set()

    def forget(self, message_id: int, latch: Latch[Outcome | BaseException]) -> None:
        """Stops awaiting for a waiter that gave up."""
        with self._lock:
            self._awaited.discard(message_id, latch)

    def _start(self) -> None:
        for target, role in ((self._listen, "listener"), (self._check, "checker")):
            thread = threading.Thread(target=target, name=f"pgbatch-results-{role}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stops both threads; waits still open end with ClientClosed."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stopping.set()
        self._urgent.set()
        self._wake.set()
        if self._threads:
            with contextlib.suppress(errors.PgBatchError):
                self._client.db.run(
                    wake_listener(self._client.queries, self._client.done_channel),
                    transaction=False,
                )
        for thread in self._threads:
            thread.join(timeout=LISTEN_TICK + 1)
        with self._lock:
            leftovers = self._awaited.clear()
        for latch in leftovers:
            latch.set(_closed_error())

    def _listen(self) -> None:
        delay = 0.0
        target = self._client.db.target
        while not self._stopping.is_set():
            try:
                with translated_errors(target):
                    self._listen_once()
                    delay = 0.0
            except errors.DatabaseError as exc:
                self._set_listening(False)
                delay = reconnect_delay(delay)
                log.warning(
                    "result listener lost its connection (%s); retrying in %.1f s", exc, delay
                )
                self._stopping.wait(delay)
        self._set_listening(False)

    def _listen_once(self) -> None:
        with psycopg.connect(
            self._client.dsn,
            autocommit=True,
            application_name=LISTENER_APPLICATION_NAME,
            connect_timeout=10,
        ) as conn:
            conn.execute(listen_statement(self._client.done_channel))
            self._set_listening(True)
            while not self._stopping.is_set():
                for notify in conn.notifies(timeout=LISTEN_TICK):
                    if self._stopping.is_set():
                        break  # close() sent an empty notification to get here at once
                    with self._lock:
                        self._awaited.notified(notify.payload)
                    self._urgent.set()
                    self._wake.set()

    def _set_listening(self, listening: bool) -> None:
        with self._lock:
            if listening and not self.listening:
                self._awaited.check_all()  # notifications may have been missed meanwhile
            self.listening = listening
        self._urgent.set()
        self._wake.set()

    def _check(self) -> None:
        polls = PollSchedule(time.monotonic())
        while not self._stopping.is_set():
            woken = self._wake.wait(polls.wait_time(time.monotonic(), self._poll_interval()))
            self._wake.clear()
            if not self._urgent.is_set() and woken:
                self._urgent.wait(REGISTRATION_DELAY)
            self._urgent.clear()
            if self._stopping.is_set():
                return
            poll = polls.due(time.monotonic(), self._poll_interval())
            with self._lock:
                if poll:
                    self._awaited.check_all()
                lows, highs, ids = self._awaited.take_due()
                due = self._interest.due(self._awaited.queues(), time.monotonic())
            if due:
                self._declare(due)  # before the check: what is archived after it notifies
            if lows or ids:
                self._check_once(lows, highs, ids)

    def _poll_interval(self) -> float:
        return POLL_WHILE_LISTENING if self.listening else POLL_WHILE_DEAF

    def _declare(self, queues: list[str]) -> None:
        try:
            self._client.db.run(declare_interest(self._client.queries, queues), transaction=False)
        except errors.PgBatchError as exc:
            log.warning("could not declare awaited results (%s); polling covers it", exc)
            return
        self._interest.declared(queues, time.monotonic())

    def _check_once(self, lows: list[int], highs: list[int], ids: list[int]) -> None:
        try:
            outcomes = self._client.db.run(
                find_outcomes(self._client.queries, lows, highs, ids), transaction=False
            )
        except errors.PgBatchError as exc:
            log.warning("checking results failed (%s); polling again shortly", exc)
            with self._lock:
                self._awaited.check_all()
            self._stopping.wait(POLL_WHILE_DEAF)
            return
        with self._lock:
            resolved = self._awaited.resolve(outcomes)
        for latch, outcome in resolved:
            latch.set(outcome)


class AsyncResultTracker:
    """Outcomes for an AsyncClient: a listener task and a checker task, started lazily."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._awaited: AwaitedIds[asyncio.Future[Any]] = AwaitedIds()
        self._wake = asyncio.Event()  # anything due
        self._urgent = asyncio.Event()  # a notification, a poll, a reconnect
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.listening = False
        self.deadlines = Deadlines()
        self._interest = Interest()

    async def wait(self, queue: str, message_id: int, timeout: float | None) -> Any:
        """The result of ``message_id`` (JobFailed for a dead letter); TimeoutError after
        ``timeout`` seconds."""
        future = self.deadlines.new_future(timeout)
        self.expect(queue, [message_id], [future])
        try:
            return await future
        except TimeoutError:
            raise _timeout_error(message_id, timeout) from None
        finally:
            self.forget(message_id, future)

    def expect(
        self, queue: str, message_ids: Sequence[int], futures: Sequence[asyncio.Future[Any]]
    ) -> None:
        """Resolves each future with its message's result (or JobFailed, or ClientClosed)."""
        if self._closed:
            for future in futures:
                if not future.done():
                    future.set_exception(_closed_error())
            return
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._listen(), name="pgbatch-results-listener"),
                asyncio.create_task(self._check(), name="pgbatch-results-checker"),
            ]
        if any(future.done() for future in futures):  # timed out or cancelled meanwhile
            pairs = [(i, f) for i, f in zip(message_ids, futures, strict=True) if not f.done()]
            message_ids, futures = [i for i, _ in pairs], [f for _, f in pairs]
        self._awaited.add_many(queue, message_ids, futures)
        self._wake.set()

    def forget(self, message_id: int, future: asyncio.Future[Any]) -> None:
        """After a wait that may have ended without an outcome (timeout, cancellation)."""
        if not future.done():
            future.cancel()
        self._awaited.discard(message_id, future)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.deadlines.cancel()
        for future in self._awaited.clear():
            if not future.done():
                future.set_exception(_closed_error())

    async def _listen(self) -> None:
        delay = 0.0
        while True:
            try:
                with translated_errors(self._client.db.target):
                    await self._listen_once()
            except errors.DatabaseError as exc:
                self._set_listening(False)
                delay = reconnect_delay(delay)
                log.warning(
                    "result listener lost its connection (%s); retrying in %.1f s", exc, delay
                )
                await asyncio.sleep(delay)

    async def _listen_once(self) -> None:
        conn = await psycopg.AsyncConnection.connect(
            self._client.dsn,
            autocommit=True,
            application_name=LISTENER_APPLICATION_NAME,
            connect_timeout=10,
        )
        async with conn:
            await conn.execute(listen_statement(self._client.done_channel))
            self._set_listening(True)
            async for notify in conn.notifies():
                self._awaited.notified(notify.payload)
                self._urgent.set()
                self._wake.set()

    def _set_listening(self, listening: bool) -> None:
        if listening and not self.listening:
            self._awaited.check_all()
        self.listening = listening
        self._urgent.set()
        self._wake.set()

    async def _check(self) -> None:
        polls = PollSchedule(time.monotonic())
        while True:
            woken = await wait_event(
                self._wake, polls.wait_time(time.monotonic(), self._poll_interval())
            )
            self._wake.clear()
            if woken and not self._urgent.is_set():
                await wait_event(self._urgent, REGISTRATION_DELAY)
            self._urgent.clear()
            if polls.due(time.monotonic(), self._poll_interval()):
                # Waits that ended early (timed out, cancelled) leave their futures behind.
                self._awaited.prune(asyncio.Future.done)
                self._awaited.check_all()
            lows, highs, ids = self._awaited.take_due()
            due = self._interest.due(self._awaited.queues(), time.monotonic())
            if due:
                await self._declare(due)  # before the check: what is archived after it notifies
            if lows or ids:
                await self._check_once(lows, highs, ids)

    def _poll_interval(self) -> float:
        return POLL_WHILE_LISTENING if self.listening else POLL_WHILE_DEAF

    async def _declare(self, queues: list[str]) -> None:
        try:
            await self._client.db.run(
                declare_interest(self._client.queries, queues), transaction=False
            )
        except errors.PgBatchError as exc:
            log.warning("could not declare awaited results (%s); polling covers it", exc)
            return
        self._interest.declared(queues, time.monotonic())

    async def _check_once(self, lows: list[int], highs: list[int], ids: list[int]) -> None:
        try:
            outcomes = await self._client.db.run(
                find_outcomes(self._client.queries, lows, highs, ids), transaction=False
            )
        except errors.PgBatchError as exc:
            log.warning("checking results failed (%s); polling again shortly", exc)
            self._awaited.check_all()
            await asyncio.sleep(POLL_WHILE_DEAF)
            return
        for future, outcome in self._awaited.resolve(outcomes):
            if not future.done():
                try:
                    future.set_result(outcome.value())
                except errors.JobFailed as exc:
                    future.set_exception(exc)
