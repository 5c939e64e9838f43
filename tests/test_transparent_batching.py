"""Transparent batching on a real PostgreSQL: submit one item, await its own result.

Consumers here are the core calls a worker makes (dequeue_many, then archive_many with
results or fail_many), run in a thread, plus one test with a real worker subprocess. Batches
are counted with the enqueue transactions' ids: every message row written by one
batch_enqueue transaction carries the same xmin.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgbatch
from pgbatch import errors
from pgbatch.awaiting import AwaitedIds, Deadlines
from pgbatch.results import LISTENER_APPLICATION_NAME
from tests.stored import stored_messages

ROOT = Path(__file__).resolve().parent.parent


def echo(msg: pgbatch.Message[Any]) -> Any:
    return {"echo": msg.payload, "id": msg.id}


@contextmanager
def consumer(
    queue: pgbatch.Queue[Any],
    result: Callable[[pgbatch.Message[Any]], Any] = echo,
    *,
    failing: Callable[[pgbatch.Message[Any]], bool] = lambda msg: False,
) -> Iterator[None]:
    """What a worker does, in a thread: archive with ``result``, fail what ``failing`` says."""
    stop = threading.Event()
    problems: list[BaseException] = []

    def run() -> None:
        try:
            while not stop.is_set():
                batch = queue.dequeue_many(500)
                bad = [m for m in batch if failing(m)]
                good = [m for m in batch if not failing(m)]
                queue.archive_many(good, results=[result(m) for m in good])
                queue.fail_many(bad, [f"no good: {m.payload}" for m in bad])
                if not batch:
                    stop.wait(0.005)
        except BaseException as exc:
            problems.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    assert problems == []


def enqueue_transactions(client: pgbatch.Client, queue: pgbatch.Queue[Any]) -> int:
    """How many transactions wrote the messages still in the queue (before any dequeue),
    stored alone or in packs."""
    with client.db.connection() as conn:
        row = conn.execute(
            sql.SQL(
                "SELECT count(DISTINCT x) FROM (SELECT xmin::text FROM {message}"
                " WHERE queue_id = %(queue)s UNION ALL SELECT xmin::text FROM {pack}"
                " WHERE queue_id = %(queue)s) AS written(x)"
            ).format(
                message=sql.Identifier(client.schema, "message"),
                pack=sql.Identifier(client.schema, "message_pack"),
            ),
            {"queue": queue.info.id},
        ).fetchone()
    assert row is not None
    return int(row[0])


def refuse_row(dsn: str, schema: str, n: int) -> None:
    """A trigger that fails the insert of the message whose payload has this ``n`` (or of
    the pack holding it): a batch carrying it fails midway through its COPY, after the rows
    before it."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN"
                " IF TG_TABLE_NAME = 'message_pack' THEN"
                "   IF NEW.payloads @> jsonb_build_array(jsonb_build_object('n', {n}::int)) THEN"
                "     RAISE EXCEPTION 'refused row n=%', {n};"
                "   END IF;"
                " ELSIF NEW.payload ->> 'n' = {n} THEN"
                "   RAISE EXCEPTION 'refused row n=%', NEW.payload ->> 'n';"
                " END IF; RETURN NEW; END $$"
            ).format(function=sql.Identifier(schema, "refuse_row"), n=sql.Literal(str(n)))
        )
        for table in ("message", "message_pack"):
            conn.execute(
                sql.SQL(
                    "CREATE TRIGGER refuse_row BEFORE INSERT ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION {function}()"
                ).format(
                    table=sql.Identifier(schema, table),
                    function=sql.Identifier(schema, "refuse_row"),
                )
            )


def results_awaited(dsn: str, schema: str, queue: str) -> bool:
    """Whether archives and dead letters of ``queue`` notify now (a tracker declared interest)."""
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT results_awaited_until > now() FROM {} WHERE name = %s").format(
                sql.Identifier(schema, "queue")
            ),
            (queue,),
        ).fetchone()
    return row is not None and bool(row[0])


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


class Relay:
    """A TCP relay between the client and the test server: a network that can stop taking new
    connections (``refuse_new``). Connections already made through it keep working."""

    def __init__(self, dsn: str) -> None:
        params = conninfo_to_dict(dsn)
        host = str(params.get("host") or "")
        if not host or host.startswith("/") or "," in host:
            pytest.skip("the relay needs one TCP address for the test server")
        self._upstream = (host, int(params.get("port") or 5432))
        self._listening = socket.create_server(("127.0.0.1", 0))
        port = self._listening.getsockname()[1]
        self.dsn = make_conninfo(dsn, host="127.0.0.1", hostaddr="", port=port)
        self.refuse_new = False
        self.server_side_ports: list[int] = []  # pg_stat_activity.client_port of each relayed
        self._lock = threading.Lock()
        self._sockets = [self._listening]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listening.accept()
            except OSError:
                return  # closed
            if self.refuse_new:
                near.close()
                continue
            far = socket.create_connection(self._upstream)
            with self._lock:
                self._sockets += [near, far]
                self.server_side_ports.append(far.getsockname()[1])
                for source, sink in ((near, far), (far, near)):
                    thread = threading.Thread(target=_pump, args=(source, sink), daemon=True)
                    thread.start()
                    self._threads.append(thread)

    def close(self) -> None:
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:  # shutdown wakes the threads blocked on them; close does not
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=5)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def keep_listener_down(relay: Relay, pg_dsn: str) -> None:
    """The relay refuses new connections and the result listener's connection through it is
    terminated: the listener cannot come back (its reconnects fail for real)."""
    relay.refuse_new = True
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        row = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = %s AND client_port = ANY(%s)",
            (LISTENER_APPLICATION_NAME, relay.server_side_ports),
        ).fetchone()
    assert row == (1,)


def message_count(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} AS m").format(stored_messages(schema))
        ).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------- sync


def test_many_threads_get_exactly_their_own_results(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    queue.configure_batching(max_batch=200, max_delay_ms=5)

    def call(n: int) -> tuple[int, Any]:
        pending = queue.submit({"n": n})
        return pending.id(timeout=10), pending.result(timeout=30)

    with consumer(queue), ThreadPoolExecutor(max_workers=64) as pool:
        outcomes = list(pool.map(call, range(3000)))
    for n, (message_id, result) in enumerate(outcomes):
        assert result == {"echo": {"n": n}, "id": message_id}
    assert len({message_id for message_id, _ in outcomes}) == 3000


def test_submits_are_written_in_few_enqueue_transactions(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    queue.configure_batching(max_batch=500, max_delay_ms=50)
    with ThreadPoolExecutor(max_workers=32) as pool:
        pendings = list(pool.map(lambda n: queue.submit({"n": n}), range(2000)))
    ids = [pending.id(timeout=10) for pending in pendings]
    assert len(set(ids)) == 2000
    transactions = enqueue_transactions(client, queue)
    # Full batches of 500 plus a few cut by the 50 ms delay: far fewer than 2,000.
    assert 4 <= transactions <= 20
    assert queue.stats().ready == 2000
    by_id = {m.id: m.payload for m in queue.dequeue_many(5000)}
    assert [by_id[i] for i in ids] == [{"n": n} for n in range(2000)]


def test_a_batch_is_written_once_its_oldest_item_waited_max_delay(
    client: pgbatch.Client,
) -> None:
    queue = client.create_queue("users")
    queue.configure_batching(max_batch=1000, max_delay_ms=200)
    started = time.monotonic()
    pending = queue.submit({"alone": True})
    with pytest.raises(TimeoutError):
        pending.id(timeout=0.05)  # not full, not old enough yet
    pending.id(timeout=5)
    assert 0.15 <= time.monotonic() - started < 3
    assert enqueue_transactions(client, queue) == 1


def test_dead_letters_reach_exactly_their_callers_as_job_failed(pg_dsn: str, schema: str) -> None:
    with pgbatch.connect(pg_dsn, schema=schema) as client:
        queue = client.create_queue("users", max_attempts=1)

        def call(n: int) -> Any:
            try:
                return queue.submit({"n": n}).result(timeout=30)
            except errors.JobFailed as exc:
                return exc

        with (
            consumer(queue, failing=lambda m: m.payload["n"] % 7 == 3),
            ThreadPoolExecutor(max_workers=32) as pool,
        ):
            outcomes = list(pool.map(call, range(700)))
    for n, outcome in enumerate(outcomes):
        if n % 7 == 3:
            assert isinstance(outcome, errors.JobFailed)
            assert outcome.last_error == f"no good: {{'n': {n}}}"
        else:
            assert outcome["echo"] == {"n": n}


def test_a_failed_flush_fails_every_pending_of_its_batch_and_writes_none(
    pg_dsn: str, schema: str
) -> None:
    with pgbatch.connect(pg_dsn, schema=schema, lock_timeout=0.2) as client:
        queue = client.create_queue("users")
        queue.configure_batching(max_batch=100, max_delay_ms=5)
        with psycopg.connect(pg_dsn) as blocker:
            blocker.execute(
                sql.SQL("LOCK TABLE {}, {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(schema, "message"), sql.Identifier(schema, "message_pack")
                )
            )
            pendings = [queue.submit({"n": n}) for n in range(100)]
            for pending in pendings:
                with pytest.raises(errors.RetryableDatabaseError, match="lock"):
                    pending.id(timeout=10)
            with pytest.raises(errors.RetryableDatabaseError):
                pendings[0].result(timeout=10)
        assert message_count(pg_dsn, schema) == 0
        assert queue.submit({"after": True}).id(timeout=10) > 0  # the flusher carries on


def test_a_flush_that_fails_midway_writes_none_of_its_batch(pg_dsn: str, schema: str) -> None:
    """The 271st row of a batch of 300 fails (a trigger): its COPY has sent the rows before it,
    past its first chunk; none of them is written, and every pending of the batch fails."""
    refuse_row(pg_dsn, schema, n=270)
    with pgbatch.connect(pg_dsn, schema=schema) as client:
        queue = client.create_queue("users")
        queue.configure_batching(max_batch=300, max_delay_ms=60_000)
        pendings = [queue.submit({"n": n}) for n in range(299)]
        with ThreadPoolExecutor(max_workers=3) as pool:
            # Result waits that start before the write, so the flusher hands them the error.
            waits = [pool.submit(pendings[i].result, 10) for i in (0, 150, 298)]
            time.sleep(0.2)
            pendings.append(queue.submit({"n": 299}))  # the batch is full: written now
            for wait in waits:
                with pytest.raises(errors.DatabaseError, match="refused row n=270"):
                    wait.result()
        for pending in pendings:
            with pytest.raises(errors.DatabaseError, match="refused row n=270"):
                pending.id(timeout=10)
        with pytest.raises(errors.DatabaseError, match="refused row n=270"):
            pendings[42].result(timeout=10)
        assert message_count(pg_dsn, schema) == 0
        after = [queue.submit({"n": n}) for n in range(1000, 1300)]  # the flusher carries on
        assert len({pending.id(timeout=10) for pending in after}) == 300
        assert message_count(pg_dsn, schema) == 300


def test_lowering_max_batch_writes_an_open_batch_already_that_large(
    client: pgbatch.Client,
) -> None:
    queue = client.create_queue("users")
    queue.configure_batching(max_batch=1000, max_delay_ms=60_000)
    pendings = [queue.submit({"n": n}) for n in range(50)]
    queue.configure_batching(max_batch=10, max_delay_ms=60_000)
    assert len({pending.id(timeout=5) for pending in pendings}) == 50  # not after a minute
    assert enqueue_transactions(client, queue) == 1  # sealed whole, not split


def test_a_dead_letter_by_lease_expiry_reaches_its_caller_at_once(
    pg_dsn: str, schema: str, client: pgbatch.Client
) -> None:
    """A consumer takes the message on its last attempt and never settles it; the dequeue that
    finds its lease expired buries it, and the waiting caller hears of it by notification,
    not at the safety-net poll (POLL_WHILE_LISTENING, 5 s after the tracker started)."""
    queue = client.create_queue("users", max_attempts=1)
    pending = queue.submit({"n": 1})
    message_id = pending.id(timeout=10)
    failures: list[tuple[float, BaseException]] = []

    def wait() -> None:
        try:
            pending.result(timeout=20)
        except BaseException as exc:
            failures.append((time.monotonic(), exc))

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until(lambda: client.results.listening and results_awaited(pg_dsn, schema, "users"))
    [taken] = queue.dequeue_many(10, lease_seconds=0.2)  # the last attempt, never settled
    assert taken.id == message_id
    time.sleep(0.3)
    buried_at = time.monotonic()
    assert queue.dequeue_many(10) == []  # buries it
    waiter.join(timeout=30)
    [(failed_at, failure)] = failures
    assert isinstance(failure, errors.JobFailed) and failure.message_id == message_id
    assert "lease expired" in (failure.last_error or "")
    assert failed_at - buried_at < 1.5


def test_older_waits_are_polled_while_new_waiters_keep_coming_and_the_listener_is_down(
    pg_dsn: str, schema: str
) -> None:
    """Each new waiter wakes the checker for its own ids; the poll of every awaited id must
    come on time all the same, or an older wait never sees its outcome while the listener
    cannot reconnect (POLL_WHILE_DEAF: 0.5 s)."""
    relay = Relay(pg_dsn)
    try:
        with pgbatch.connect(relay.dsn, schema=schema, min_size=4, max_size=4) as client:
            queue = client.create_queue("users")
            [old] = queue.batch_enqueue([{"n": 1}])
            elsewhere = old + 1_000_000  # no such message, and far from the old one's ids
            with pytest.raises(TimeoutError):
                queue.result(elsewhere, timeout=0.05)  # starts the listener
            wait_until(lambda: client.results.listening)
            keep_listener_down(relay, pg_dsn)
            wait_until(lambda: not client.results.listening)
            stop = threading.Event()

            def new_waiters() -> None:  # steady traffic: a new wait every 0.1 s
                while not stop.is_set():
                    with contextlib.suppress(TimeoutError):
                        queue.result(elsewhere, timeout=0.1)

            def archive_old() -> None:
                time.sleep(0.3)  # after the old wait's first check
                queue.archive_many(queue.dequeue_many(10), results=[{"ok": 1}])

            threads = [threading.Thread(target=new_waiters), threading.Thread(target=archive_old)]
            for thread in threads:
                thread.start()
            try:
                assert queue.result(old, timeout=3) == {"ok": 1}
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            assert not client.results.listening  # it was the poll, not a reconnect
    finally:
        relay.close()


def test_a_bad_payload_fails_only_its_own_submit(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    good = queue.submit({"ok": 1})
    with pytest.raises(errors.PayloadNotJSON):
        queue.submit({"bad": object()})
    with pytest.raises(errors.PayloadNotJSON):
        queue.submit({"nan": float("nan")})
    assert good.id(timeout=10) > 0
    assert queue.stats().ready == 1


def test_close_flushes_what_is_pending(pg_dsn: str, schema: str) -> None:
    client = pgbatch.connect(pg_dsn, schema=schema)
    queue = client.create_queue("users")
    queue.configure_batching(max_batch=10_000, max_delay_ms=60_000)
    pendings = [queue.submit({"n": n}) for n in range(1500)]
    assert message_count(pg_dsn, schema) == 0  # nothing is due for a minute
    client.close()
    assert message_count(pg_dsn, schema) == 1500
    assert len({pending.id(timeout=0) for pending in pendings}) == 1500
    with pytest.raises(errors.ClientClosed):
        queue.submit({"late": True})


def test_submit_blocks_while_max_pending_are_unflushed(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    queue.configure_batching(max_batch=1000, max_delay_ms=60_000, max_pending=10)
    for n in range(10):
        queue.submit({"n": n})
    returned = threading.Event()

    def one_more() -> None:
        queue.submit({"n": 10})
        returned.set()

    thread = threading.Thread(target=one_more)
    thread.start()
    assert not returned.wait(0.5)  # blocked: ten are waiting for their flush
    queue.configure_batching(max_batch=1000, max_delay_ms=0, max_pending=10)
    assert returned.wait(10)
    thread.join()
    client.submitter.close()
    assert queue.stats().ready == 11


def test_results_of_messages_enqueued_another_way(client: pgbatch.Client) -> None:
    queue = client.create_queue("users", max_attempts=1)
    early = queue.batch_enqueue([{"n": 0}, {"n": 1}])
    with consumer(queue, result=lambda m: m.payload["n"] * 10):
        # Archived before anyone waits: found by the check a new waiter triggers.
        deadline = time.monotonic() + 10
        while queue.stats().archived < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [queue.result(i, timeout=10) for i in early] == [0, 10]
        later = queue.batch_enqueue([{"n": n} for n in range(2, 300)])
        with ThreadPoolExecutor(max_workers=16) as pool:
            values = list(pool.map(lambda i: queue.result(i, timeout=30), later))
    assert values == [n * 10 for n in range(2, 300)]


def test_a_message_nobody_processes_times_out(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    [message_id] = queue.batch_enqueue([{"n": 1}])
    started = time.monotonic()
    with pytest.raises(TimeoutError, match=str(message_id)):
        queue.result(message_id, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 3
    with pytest.raises(TimeoutError):
        queue.submit({"n": 2}).result(timeout=0.3)


def test_results_arrive_after_the_listener_connection_is_killed(
    pg_dsn: str, client: pgbatch.Client
) -> None:
    queue = client.create_queue("users")
    with consumer(queue):
        assert queue.submit({"n": 0}).result(timeout=10)["echo"] == {"n": 0}
        assert client.results.listening
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (LISTENER_APPLICATION_NAME,),
            ).fetchone()
        assert killed is not None and killed[0] >= 1
        values = [queue.submit({"n": n}) for n in range(1, 50)]
        assert [p.result(timeout=15)["echo"] for p in values] == [{"n": n} for n in range(1, 50)]
    deadline = time.monotonic() + 10
    while not client.results.listening and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.results.listening  # reconnected


def test_close_ends_open_waits_with_client_closed(pg_dsn: str, schema: str) -> None:
    client = pgbatch.connect(pg_dsn, schema=schema)
    queue = client.create_queue("users")
    pending = queue.submit({"n": 1})
    failures: list[BaseException] = []

    def wait() -> None:
        try:
            pending.result(timeout=60)
        except BaseException as exc:
            failures.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.3)
    client.close()
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert len(failures) == 1 and isinstance(failures[0], errors.ClientClosed)


def test_several_waiters_of_one_message_all_get_its_result(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    pending = queue.submit({"n": 5})
    message_id = pending.id(timeout=10)
    with ThreadPoolExecutor(max_workers=4) as pool:
        waits = [pool.submit(queue.result, message_id, timeout=30) for _ in range(3)]
        waits.append(pool.submit(pending.result, 30))
        time.sleep(0.2)  # all four are waiting before the message is processed
        with consumer(queue):
            values = [w.result() for w in waits]
    assert values == [{"echo": {"n": 5}, "id": message_id}] * 4


def test_a_model_queue_checks_each_submit_against_its_model(client: pgbatch.Client) -> None:
    class User(pydantic.BaseModel):
        name: str
        age: int

    queue = client.create_queue("users", model=User)
    with pytest.raises(errors.PayloadValidationError) as raised:
        queue.submit({"name": "ada", "age": "old"})
    assert raised.value.fields == ("age",)
    pending = queue.submit(User(name="ada", age=36))
    pending.id(timeout=10)
    [msg] = queue.dequeue_many(10)
    assert msg.payload == User(name="ada", age=36)


def test_batching_settings_are_checked(client: pgbatch.Client) -> None:
    queue = client.create_queue("users")
    with pytest.raises(errors.InvalidArgument):
        queue.configure_batching(max_batch=0)
    with pytest.raises(errors.InvalidArgument):
        queue.configure_batching(max_delay_ms=-1)
    with pytest.raises(errors.InvalidArgument):
        queue.configure_batching(max_pending=0)


def test_awaited_ids_are_read_as_ranges_when_dense_and_one_by_one_when_sparse() -> None:
    awaited: AwaitedIds[str] = AwaitedIds()
    awaited.add_many("q", range(1000, 1300), ["w"] * 300)
    awaited.add_many("q", [5000, 9000], ["x", "y"])
    lows, highs, singles = awaited.take_due()
    assert list(zip(lows, highs, strict=True)) == [(960, 1343)]
    assert sorted(singles) == [5000, 9000]
    assert awaited.take_due() == ([], [], [])  # nothing new is due
    awaited.notified("other queue")
    assert awaited.take_due() == ([], [], [])
    resolved = awaited.resolve([(1000, False, "1", None), (4999, False, None, None)])
    assert [(w, o.value()) for w, o in resolved] == [("w", 1)]
    awaited.notified("q")
    lows, highs, singles = awaited.take_due()
    assert (lows, highs, sorted(singles)) == ([960], [1343], [5000, 9000])
    assert len(awaited) == 301


# ---------------------------------------------------------------- async


async def test_deadlines_time_out_only_what_is_still_waiting() -> None:
    deadlines = Deadlines()
    loop = asyncio.get_running_loop()
    started = loop.time()
    early = [deadlines.new_future(0.2) for _ in range(1000)]
    for future in early:
        future.set_result("done early")
    late = [deadlines.new_future(0.2) for _ in range(2000)]
    long = deadlines.new_future(0.6)
    # Finished futures are swept out in bulk rather than kept until their deadline.
    assert len(deadlines._fifos[0.2].futures) < 2100
    with pytest.raises(TimeoutError, match=r"within 0\.2 s"):
        await late[-1]
    assert 0.18 <= loop.time() - started < 0.5
    assert all(isinstance(f.exception(), TimeoutError) for f in late)
    assert not long.done()
    with pytest.raises(TimeoutError, match=r"within 0\.6 s"):
        await long
    assert all(f.result() == "done early" for f in early)
    deadlines.cancel()


async def test_async_tasks_get_exactly_their_own_results(
    async_client: pgbatch.AsyncClient, client: pgbatch.Client
) -> None:
    aqueue = await async_client.create_queue("users", max_attempts=1)
    aqueue.configure_batching(max_batch=300, max_delay_ms=5)

    async def call(n: int) -> Any:
        pending = await aqueue.submit({"n": n})
        try:
            return await pending.id(), await pending.result(timeout=30)
        except errors.JobFailed as exc:
            return exc

    with consumer(client.queue("users"), failing=lambda m: m.payload["n"] == 77):
        outcomes = await asyncio.gather(*(call(n) for n in range(2000)))
    for n, outcome in enumerate(outcomes):
        if n == 77:
            assert isinstance(outcome, errors.JobFailed)
        else:
            message_id, result = outcome
            assert result == {"echo": {"n": n}, "id": message_id}
    assert enqueue_transactions(client, client.queue("users")) == 0  # all consumed
    stats = client.queue("users").stats()
    assert (stats.archived, stats.dead) == (1999, 1)


async def test_async_batches_bound_and_close_flush(pg_dsn: str, schema: str) -> None:
    client = await pgbatch.connect_async(pg_dsn, schema=schema)
    aqueue = await client.create_queue("users")
    aqueue.configure_batching(max_batch=1000, max_delay_ms=60_000, max_pending=20)
    pendings = [await aqueue.submit({"n": n}) for n in range(20)]
    blocked = asyncio.create_task(aqueue.submit({"n": 20}))
    await asyncio.sleep(0.3)
    assert not blocked.done()  # awaiting room
    assert message_count(pg_dsn, schema) == 0
    aqueue.configure_batching(max_batch=1000, max_delay_ms=0, max_pending=20)
    last = await asyncio.wait_for(blocked, 10)
    ids = [await p.id(timeout=10) for p in [*pendings, last]]
    assert len(set(ids)) == 21
    aqueue.configure_batching(max_batch=1000, max_delay_ms=60_000, max_pending=1000)
    more = [await aqueue.submit({"n": n}) for n in range(21, 521)]
    await client.close()
    assert message_count(pg_dsn, schema) == 521
    assert len({await p.id(timeout=0) for p in more}) == 500
    with pytest.raises(errors.ClientClosed):
        await aqueue.submit({"late": True})


async def test_async_result_can_be_awaited_again_after_a_timeout(
    async_client: pgbatch.AsyncClient, client: pgbatch.Client
) -> None:
    aqueue = await async_client.create_queue("users")
    pending = await aqueue.submit({"n": 1})
    with pytest.raises(TimeoutError):
        await pending.result(timeout=0.2)
    cancelled = asyncio.ensure_future(pending.result(timeout=30))
    await asyncio.sleep(0.05)
    cancelled.cancel()
    with consumer(client.queue("users")):
        value = await pending.result(timeout=30)
    assert value == {"echo": {"n": 1}, "id": await pending.id()}
    assert await pending.result() is value  # kept once it arrived


async def test_async_result_of_a_message_enqueued_another_way(
    async_client: pgbatch.AsyncClient, client: pgbatch.Client
) -> None:
    aqueue = await async_client.create_queue("users")
    ids = await aqueue.batch_enqueue([{"n": n} for n in range(100)])
    with pytest.raises(TimeoutError):
        await aqueue.result(ids[0], timeout=0.2)
    with consumer(client.queue("users"), result=lambda m: m.payload["n"] + 1):
        values = await asyncio.gather(*(aqueue.result(i, timeout=30) for i in ids))
    assert values == [n + 1 for n in range(100)]
    with pytest.raises(TimeoutError):
        await (await aqueue.submit({"n": -1})).result(timeout=0.2)


async def async_wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_async_flush_that_fails_midway_writes_none_of_its_batch(
    pg_dsn: str, schema: str, async_client: pgbatch.AsyncClient
) -> None:
    refuse_row(pg_dsn, schema, n=270)
    aqueue = await async_client.create_queue("users")
    aqueue.configure_batching(max_batch=300, max_delay_ms=60_000)
    pendings = [await aqueue.submit({"n": n}) for n in range(299)]
    waits = [pendings[i].result(timeout=10) for i in (0, 150, 298)]  # before the write
    pendings.append(await aqueue.submit({"n": 299}))  # the batch is full: written now
    for wait in waits:
        with pytest.raises(errors.DatabaseError, match="refused row n=270"):
            await wait
    for pending in pendings:
        with pytest.raises(errors.DatabaseError, match="refused row n=270"):
            await pending.id(timeout=10)
    with pytest.raises(errors.DatabaseError, match="refused row n=270"):
        await pendings[42].result(timeout=10)
    assert message_count(pg_dsn, schema) == 0
    after = [await aqueue.submit({"n": n}) for n in range(1000, 1300)]  # the flusher carries on
    assert len({await pending.id(timeout=10) for pending in after}) == 300
    assert message_count(pg_dsn, schema) == 300


async def test_async_older_waits_are_polled_while_new_waiters_keep_coming_and_the_listener_is_down(
    pg_dsn: str, schema: str
) -> None:
    relay = Relay(pg_dsn)
    try:
        async with pgbatch.connect_async(
            relay.dsn, schema=schema, min_size=4, max_size=4
        ) as client:
            aqueue = await client.create_queue("users")
            [old] = await aqueue.batch_enqueue([{"n": 1}])
            elsewhere = old + 1_000_000
            with pytest.raises(TimeoutError):
                await aqueue.result(elsewhere, timeout=0.05)  # starts the listener
            await async_wait_until(lambda: client.results.listening)
            await asyncio.to_thread(keep_listener_down, relay, pg_dsn)
            await async_wait_until(lambda: not client.results.listening)

            async def new_waiters() -> None:  # steady traffic: a new wait every 0.1 s
                while True:
                    with contextlib.suppress(TimeoutError):
                        await aqueue.result(elsewhere, timeout=0.1)

            async def archive_old() -> None:
                await asyncio.sleep(0.3)  # after the old wait's first check
                await aqueue.archive_many(await aqueue.dequeue_many(10), results=[{"ok": 1}])

            traffic = asyncio.create_task(new_waiters())
            archive = asyncio.create_task(archive_old())
            try:
                assert await aqueue.result(old, timeout=3) == {"ok": 1}
            finally:
                traffic.cancel()
                await asyncio.gather(traffic, archive, return_exceptions=True)
            assert not client.results.listening  # it was the poll, not a reconnect
    finally:
        relay.close()


async def test_a_result_is_none_when_the_handler_gives_none(
    pg_dsn: str, schema: str, async_client: pgbatch.AsyncClient
) -> None:
    aqueue = await async_client.create_queue("users")
    app = pgbatch.App(pg_dsn, schema=schema, application_name=f"w-{schema}")

    @app.batch_handler("users", batch_size=10)
    def handle(batch: pgbatch.Batch[Any]) -> None:
        for msg in batch:
            if msg.payload["n"] == 0:
                batch.complete(msg, {"n": 0})

    async def results_of(numbers: list[int]) -> list[Any]:
        pendings = [await aqueue.submit({"n": n}) for n in numbers]
        for pending in pendings:
            await pending.id()
        await app.run_worker_async(until_empty=True, install_signal_handlers=False)
        return [await pending.result(timeout=10) for pending in pendings]

    assert await results_of([1, 2]) == [None, None]  # no result in the whole batch
    assert await results_of([0, 3]) == [{"n": 0}, None]  # a result for another message only


# ---------------------------------------------------------------- with a real worker


def test_the_seed_scenario_with_a_worker_process(pg_dsn: str, schema: str) -> None:
    """workers/transparent_batching.py's worker (a subprocess with a transactional handler)."""
    env = {**os.environ, "PGBATCH_DSN": pg_dsn, "PYTHONPATH": str(ROOT)}
    with pgbatch.connect(pg_dsn, schema=schema) as client:
        from workers.transparent_batching import QUEUE, prepare, user

        prepare(client)
        worker = subprocess.Popen(
            [sys.executable, "-m", "workers.transparent_batching", "--worker", "--schema", schema],
            env=env,
            cwd=ROOT,
        )
        try:
            queue = client.queue(QUEUE)
            with ThreadPoolExecutor(max_workers=100) as pool:
                results = list(
                    pool.map(lambda n: queue.submit(user(n)).result(timeout=60), range(3000))
                )
        finally:
            worker.terminate()
            assert worker.wait(timeout=30) == 0
        with client.db.connection() as conn:
            rows = conn.execute(
                sql.SQL("SELECT id, email FROM {}").format(sql.Identifier(schema, "users"))
            ).fetchall()
    id_by_email = {email: row_id for row_id, email in rows}
    assert [r["id"] for r in results] == [id_by_email[user(n)["email"]] for n in range(3000)]


def test_the_example_runs_and_checks_its_results(pg_dsn: str, schema: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "workers.transparent_batching",
            *("--dsn", pg_dsn, "--schema", schema, "--sizes", "300", "--threads", "50"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert run.returncode == 0, run.stderr
    assert "300 calls" in run.stdout
    assert "asyncio tasks" in run.stdout and "one transaction per call" in run.stdout
