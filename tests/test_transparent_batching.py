"""Transparent batching on a real PostgreSQL: submit one item, await its own result.

Consumers here are the core calls a worker makes (dequeue_many, then archive_many with
results or fail_many), run in a thread, plus one test with a real worker subprocess. Batches
are counted with the enqueue transactions' ids: every message row written by one
batch_enqueue transaction carries the same xmin.
"""

from __future__ import annotations

import asyncio
import os
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

import pgbatch
from pgbatch import errors
from pgbatch.awaiting import AwaitedIds, Deadlines
from pgbatch.results import LISTENER_APPLICATION_NAME

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
    """How many transactions wrote the messages still in the queue (before any dequeue)."""
    with client.db.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(DISTINCT xmin::text) FROM {} WHERE queue_id = %s").format(
                sql.Identifier(client.schema, "message")
            ),
            (queue.info.id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def message_count(dsn: str, schema: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, "message"))
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
                sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(schema, "message")
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
