"""The worker runtime in this process, on a real PostgreSQL: outcomes, poison isolation,
transactional handlers, concurrency, wake-ups, leases and fencing, drain mode, logging.

Workers run with ``run_worker_async`` on the test's event loop; the tests that need real
processes, signals and kills are in test_worker_processes.py.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql

import pgbatch
from pgbatch.worker import adaptive, listener, registry
from tests.stored import stored_messages

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(pg_dsn: str, schema: str) -> pgbatch.App:
    # An application_name of its own, so terminating "the worker's connections" hits only ours.
    return pgbatch.App(pg_dsn, schema=schema, application_name=f"w-{schema}")


@pytest.fixture
def db(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


def rows(db: psycopg.Connection[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    return db.execute(query, params).fetchall()


def enqueue(client: pgbatch.Client, queue: str, payloads: list[Any], **settings: Any) -> list[int]:
    q = client.create_queue(queue, **settings)
    return q.batch_enqueue(payloads)


async def drain(app: pgbatch.App, **options: Any) -> pgbatch.WorkerReport:
    options.setdefault("install_signal_handlers", False)
    return await app.run_worker_async(until_empty=True, **options)


async def start_worker(app: pgbatch.App, **options: Any) -> asyncio.Task[pgbatch.WorkerReport]:
    options.setdefault("install_signal_handlers", False)
    return asyncio.create_task(app.run_worker_async(**options))


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- outcomes -------------------------------------------------------------------------------


async def test_per_message_outcomes_archive_in_one_statement_with_results(app, client, db, schema):
    ids = enqueue(client, "jobs", [{"n": i} for i in range(10)], backoff_base=60)
    sizes = []

    @app.batch_handler("jobs", batch_size=10)
    def handle(batch: pgbatch.Batch[dict[str, int]]) -> None:
        sizes.append(len(batch))
        for msg in batch:
            if msg.payload["n"] % 3 == 0:
                batch.fail(msg, f"bad {msg.payload['n']}")
            else:
                batch.complete(msg, {"double": msg.payload["n"] * 2})

    report = await drain(app)

    assert sizes == [10]
    failed = {ids[n] for n in (0, 3, 6, 9)}
    archived = rows(db, f"SELECT id, result, archived_at FROM {schema}.archive ORDER BY id")
    assert [r[0] for r in archived] == [i for i in ids if i not in failed]
    assert [r[1] for r in archived] == [{"double": n * 2} for n in (1, 2, 4, 5, 7, 8)]
    # One statement: one transaction, so one now() for the whole batch.
    assert len({r[2] for r in archived}) == 1
    waiting = rows(db, f"SELECT id, last_error, attempts FROM {schema}.message ORDER BY id")
    assert waiting == [(ids[n], f"bad {n}", 1) for n in (0, 3, 6, 9)]
    assert (report.batches, report.archived, report.failed, report.dead_lettered) == (1, 6, 4, 0)


async def test_a_raising_handler_fails_the_whole_batch(app, client, db, schema):
    ids = enqueue(client, "jobs", [{"n": i} for i in range(5)], backoff_base=60)

    @app.batch_handler("jobs", split_on_failure=False)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        raise RuntimeError("smtp down")

    report = await drain(app)

    assert rows(db, f"SELECT count(*) FROM {schema}.archive") == [(0,)]
    waiting = rows(db, f"SELECT id, last_error, attempts FROM {schema}.message ORDER BY id")
    assert waiting == [(i, "RuntimeError: smtp down", 1) for i in ids]
    assert (report.archived, report.failed) == (0, 5)


async def test_a_poison_message_is_isolated_and_dead_lettered(app, client, db, schema, caplog):
    ids = enqueue(client, "jobs", [{"n": i} for i in range(100)], max_attempts=3, backoff_base=0)
    poison = ids[37]
    calls: list[int] = []

    @app.batch_handler("jobs", batch_size=100)
    def handle(batch: pgbatch.Batch[Any]) -> None:
        calls.append(len(batch))
        if any(m.id == poison for m in batch):
            raise ValueError("cannot parse n=37")

    with caplog.at_level(logging.WARNING, logger="pgbatch.worker"):
        report = await drain(app)

    archived = [r[0] for r in rows(db, f"SELECT id FROM {schema}.archive ORDER BY id")]
    assert archived == [i for i in ids if i != poison]
    dead = rows(db, f"SELECT id, attempts, last_error FROM {schema}.dead_letter")
    assert dead == [(poison, 3, "ValueError: cannot parse n=37")]
    assert rows(db, f"SELECT count(*) FROM {schema}.message") == [(0,)]
    # The first delivery: 1 call on 100, then halves down to the poison (2 per level).
    first_delivery = calls[: 1 + 2 * 7]
    assert first_delivery[0] == 100 and first_delivery[-1] == 1 and len(calls) <= 1 + 2 * 7 + 2
    assert report.archived == 99 and report.dead_lettered == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"message {poison} dead-lettered after 3 attempts" in w for w in warnings)


async def test_payloads_are_parsed_into_the_model_and_a_misfit_fails_alone(app, client, db, schema):
    class Signup(pydantic.BaseModel):
        email: str

    ids = enqueue(
        client,
        "signups",
        [{"email": "a@x.org"}, {"mail": "oops"}, {"email": "b@x.org"}],
        backoff_base=60,
    )
    seen: list[Any] = []

    @app.batch_handler("signups", model=Signup)
    def handle(batch: pgbatch.Batch[Signup]) -> None:
        seen.extend(m.payload for m in batch)

    await drain(app)

    assert seen == [Signup(email="a@x.org"), Signup(email="b@x.org")]
    [(bad_id, error)] = rows(db, f"SELECT id, last_error FROM {schema}.message")
    assert bad_id == ids[1] and error.startswith("payload does not fit Signup")


# --- transactional handlers ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_transactional_writes_and_archive_commit_together(app, client, db, schema, kind):
    db.execute(f"CREATE TABLE {schema}.users (name text PRIMARY KEY)")
    ids = enqueue(client, "users", [{"name": f"u{i}"} for i in range(20)])
    insert = f"INSERT INTO {schema}.users (name) SELECT unnest(%s::text[])"

    if kind == "sync":

        @app.batch_handler("users", transactional=True, batch_size=20)
        def handle(batch: pgbatch.Batch[Any]) -> None:
            assert isinstance(batch.conn, psycopg.Connection)
            batch.conn.execute(insert, ([m.payload["name"] for m in batch],))
    else:

        @app.batch_handler("users", transactional=True, batch_size=20)
        async def handle(batch: pgbatch.Batch[Any]) -> None:
            assert isinstance(batch.conn, psycopg.AsyncConnection)
            await batch.conn.execute(insert, ([m.payload["name"] for m in batch],))

    report = await drain(app)

    assert report.archived == 20
    assert rows(db, f"SELECT count(*) FROM {schema}.users") == [(20,)]
    # The same transaction wrote both: each user row has the xmin of its message's archive row.
    same_transaction = rows(
        db,
        f"SELECT count(*) FROM {schema}.users u JOIN {schema}.archive a"
        f" ON a.payload->>'name' = u.name AND a.xmin::text = u.xmin::text",
    )
    assert same_transaction == [(20,)]
    assert sorted(r[0] for r in rows(db, f"SELECT id FROM {schema}.archive")) == ids


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_transactional_handler_that_raises_leaves_neither_rows_nor_archive(
    app, client, db, schema, kind
):
    db.execute(f"CREATE TABLE {schema}.users (name text PRIMARY KEY)")
    enqueue(client, "users", [{"name": f"u{i}"} for i in range(4)], max_attempts=2, backoff_base=0)
    insert = f"INSERT INTO {schema}.users (name) SELECT unnest(%s::text[])"
    attempts = []

    if kind == "sync":

        @app.batch_handler("users", transactional=True, split_on_failure=False)
        def handle(batch: pgbatch.Batch[Any]) -> None:
            batch.conn.execute(insert, ([m.payload["name"] for m in batch],))
            attempts.append(len(batch))
            raise RuntimeError("after writing")
    else:

        @app.batch_handler("users", transactional=True, split_on_failure=False)
        async def handle(batch: pgbatch.Batch[Any]) -> None:
            await batch.conn.execute(insert, ([m.payload["name"] for m in batch],))
            attempts.append(len(batch))
            raise RuntimeError("after writing")

    report = await drain(app)

    assert attempts == [4, 4]  # it really wrote, twice, and each time it was rolled back
    assert rows(db, f"SELECT count(*) FROM {schema}.users") == [(0,)]
    assert rows(db, f"SELECT count(*) FROM {schema}.archive") == [(0,)]
    assert rows(db, f"SELECT count(*), min(last_error) FROM {schema}.dead_letter") == [
        (4, "RuntimeError: after writing")
    ]
    assert report.dead_lettered == 4


async def test_transactional_poison_isolation_commits_the_good_halves(app, client, db, schema):
    db.execute(f"CREATE TABLE {schema}.users (name text PRIMARY KEY)")
    ids = enqueue(client, "users", [{"name": f"u{i}"} for i in range(16)], max_attempts=1)
    insert = f"INSERT INTO {schema}.users (name) SELECT unnest(%s::text[])"

    @app.batch_handler("users", transactional=True, batch_size=16)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        await batch.conn.execute(insert, ([m.payload["name"] for m in batch],))
        if any(m.payload["name"] == "u5" for m in batch):
            raise ValueError("u5 is reserved")

    await drain(app)

    names = {r[0] for r in rows(db, f"SELECT name FROM {schema}.users")}
    assert names == {f"u{i}" for i in range(16)} - {"u5"}
    assert [r[0] for r in rows(db, f"SELECT id FROM {schema}.dead_letter")] == [ids[5]]


# --- concurrency ------------------------------------------------------------------------------


async def test_an_async_batch_of_1000_slow_calls_takes_one_call_time(app, client, db, schema):
    enqueue(client, "lookups", [{"n": i} for i in range(1000)])
    spans: list[float] = []

    @app.batch_handler("lookups", batch_size=1000)
    async def lookups(batch: pgbatch.Batch[Any]) -> None:
        started = time.perf_counter()

        async def call(msg: pgbatch.Message[Any]) -> None:
            await asyncio.sleep(0.2)  # a third-party call of 200 ms
            batch.complete(msg, msg.payload["n"])

        await asyncio.gather(*(call(m) for m in batch))
        spans.append(time.perf_counter() - started)

    started = time.perf_counter()
    report = await drain(app)
    elapsed = time.perf_counter() - started

    assert report.archived == 1000 and report.batches == 1
    # About one call's time (the target is 0.3 s; margin for a loaded test machine).
    assert 0.2 <= spans[0] < 0.6
    assert elapsed < 2.0  # startup (migrate, pool) included
    assert rows(db, f"SELECT count(*) FROM {schema}.archive WHERE result IS NOT NULL") == [(1000,)]


async def test_batches_run_concurrently_in_threads_with_prefetch_and_backpressure(
    app, client, db, schema
):
    enqueue(client, "jobs", [{"n": i} for i in range(200)])
    running = 0
    most = 0
    leased_seen: list[int] = []
    threads: set[str] = set()
    lock = threading.Lock()

    @app.batch_handler("jobs", batch_size=10)
    def handle(batch: pgbatch.Batch[Any]) -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.current_thread().name)
        time.sleep(0.15)
        with psycopg.connect(client.dsn, autocommit=True) as conn:
            leased_seen.append(
                conn.execute(
                    sql.SQL(
                        "SELECT count(*) FROM {} AS m WHERE lease_token IS NOT NULL"
                        " AND visible_at > now()"
                    ).format(stored_messages(schema))
                ).fetchone()[0]
            )
        with lock:
            running -= 1

    started = time.perf_counter()
    report = await drain(app, concurrency=4)
    elapsed = time.perf_counter() - started

    assert report.archived == 200 and report.batches == 20
    assert most == 4  # four batches in flight, never more
    assert threading.main_thread().name not in threads and len(threads) == 4
    # Each lane holds its running batch and has the next one fetched already, and no more.
    assert max(leased_seen) == 4 * 2 * 10
    assert elapsed < 2.4  # serial would take 3 s, plus startup


async def test_async_handlers_run_on_the_event_loop(app, client):
    enqueue(client, "jobs", [{"n": 1}])
    loops = []

    @app.batch_handler("jobs")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        loops.append((asyncio.get_running_loop(), threading.current_thread()))

    await drain(app)
    assert loops == [(asyncio.get_running_loop(), threading.main_thread())]


async def test_several_queues_in_one_worker(app, client, db, schema):
    enqueue(client, "a", [{"n": i} for i in range(30)])
    enqueue(client, "b", [{"n": i} for i in range(30)])
    enqueue(client, "c", [{"n": i} for i in range(30)])
    handled: dict[str, int] = {"a": 0, "b": 0}

    for name in ("a", "b"):

        @app.batch_handler(name, batch_size=7)
        async def handle(batch: pgbatch.Batch[Any]) -> None:
            handled[batch.queue] += len(batch)

    @app.batch_handler("c")
    async def not_this_one(batch: pgbatch.Batch[Any]) -> None:
        raise AssertionError("queue c was not asked for")

    await drain(app, queues=["a", "b"])
    assert handled == {"a": 30, "b": 30}
    assert rows(db, f"SELECT count(*) FROM {schema}.message") == [(30,)]


# --- wake-ups ---------------------------------------------------------------------------------


async def test_an_idle_worker_wakes_on_notify_within_milliseconds(app, client, monkeypatch):
    monkeypatch.setattr(listener, "POLL_SECONDS", 60.0)  # so only NOTIFY can wake it
    q = client.create_queue("jobs")
    started: list[float] = []

    @app.batch_handler("jobs")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        started.append(time.perf_counter())

    task = await start_worker(app)
    await asyncio.sleep(0.5)  # started, fetched nothing, idle
    latencies = []
    for n in range(5):
        committed = time.perf_counter()
        await asyncio.to_thread(q.enqueue, {"n": n})
        await wait_for(lambda n=n: len(started) > n, timeout=5)
        latencies.append(started[n] - committed)
    await stop(task)
    assert max(latencies) < 0.1, latencies
    assert sorted(latencies)[2] < 0.03, latencies


async def test_the_listener_reconnects_and_polling_covers_the_gap(app, client, db, monkeypatch):
    monkeypatch.setattr(listener, "POLL_SECONDS_WITHOUT_LISTENER", 0.2)
    q = client.create_queue("jobs")
    handled: list[int] = []

    @app.batch_handler("jobs")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        handled.extend(m.payload["n"] for m in batch)

    task = await start_worker(app)
    name = f"{app.application_name}-listener"
    backends = f"SELECT pid FROM pg_stat_activity WHERE application_name = '{name}'"
    await wait_for(lambda: len(rows(db, backends)) == 1)
    [(first_pid,)] = rows(db, backends)
    db.execute(f"SELECT pg_terminate_backend(pid) FROM ({backends}) AS b")
    q.enqueue({"n": 1})
    await wait_for(lambda: handled == [1], timeout=5)
    await wait_for(lambda: len(rows(db, backends)) == 1 and rows(db, backends)[0][0] != first_pid)
    q.enqueue({"n": 2})
    await wait_for(lambda: handled == [1, 2], timeout=5)
    await stop(task)


async def test_delayed_messages_are_picked_up_by_polling(app, client, monkeypatch):
    monkeypatch.setattr(listener, "POLL_SECONDS", 0.2)
    q = client.create_queue("jobs")
    handled: list[float] = []

    @app.batch_handler("jobs")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        handled.append(time.perf_counter())

    task = await start_worker(app)
    await asyncio.sleep(0.3)
    enqueued = time.perf_counter()
    q.enqueue({"n": 1}, delay=0.5)
    await wait_for(lambda: bool(handled), timeout=5)
    await stop(task)
    assert 0.5 <= handled[0] - enqueued < 1.2


# --- leases and fencing ------------------------------------------------------------------------


async def test_a_handler_outliving_its_lease_keeps_it(app, client, db, schema):
    q = client.create_queue("slow", lease_seconds=0.6)
    [mid] = q.batch_enqueue([{"n": 1}])
    stolen: list[Any] = []

    @app.batch_handler("slow")
    def handle(batch: pgbatch.Batch[Any]) -> None:
        for _ in range(6):  # five leases long
            time.sleep(0.5)
            stolen.extend(q.dequeue_many(10))  # another consumer finds nothing to take

    report = await drain(app)
    assert stolen == []
    assert rows(db, f"SELECT id, attempts FROM {schema}.archive") == [(mid, 1)]
    assert report.lease_losses == 0


async def test_a_lost_lease_is_not_archived_and_is_counted(app, client, db, schema, caplog):
    q = client.create_queue("jobs", lease_seconds=30)
    ids = q.batch_enqueue([{"n": 1}, {"n": 2}])
    taken_over: list[pgbatch.Message[Any]] = []

    @app.batch_handler("jobs")
    def handle(batch: pgbatch.Batch[Any]) -> None:
        # Forge the lease running out (renewal blocked), and another consumer taking over.
        db.execute(f"UPDATE {schema}.message SET visible_at = now() WHERE id = %s", (ids[0],))
        taken_over.extend(q.dequeue_many(10))

    with caplog.at_level(logging.WARNING, logger="pgbatch.worker"):
        report = await drain(app)

    assert [m.id for m in taken_over] == [ids[0]]
    assert rows(db, f"SELECT id FROM {schema}.archive") == [(ids[1],)]
    assert rows(db, f"SELECT id, lease_token FROM {schema}.message") == [
        (ids[0], taken_over[0].lease_token)
    ]
    assert report.lease_losses == 1 and report.archived == 1
    assert any(
        "lease lost on 1 message(s)" in r.getMessage() and str(ids[0]) in r.getMessage()
        for r in caplog.records
    )
    assert q.archive_many(taken_over) == [ids[0]]  # the new holder's archive works


# --- drain mode, adaptive size, registry, logging -----------------------------------------------


async def test_drain_mode_waits_for_retries_that_come_back_at_once(app, client, db, schema):
    enqueue(client, "jobs", [{"n": i} for i in range(50)], backoff_base=0)
    seen: dict[int, int] = {}

    @app.batch_handler("jobs", batch_size=10)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        for msg in batch:
            seen[msg.id] = seen.get(msg.id, 0) + 1
            if msg.attempts < 3:
                batch.fail(msg, "not yet", delay=0)

    report = await drain(app)
    assert set(seen.values()) == {3}
    assert rows(db, f"SELECT count(*) FROM {schema}.archive") == [(50,)]
    assert report.failed == 100 and report.archived == 50


async def test_auto_batch_size_grows_on_fast_batches(app, client):
    enqueue(client, "jobs", [{"n": i} for i in range(5000)])
    sizes: list[int] = []

    @app.batch_handler("jobs", batch_size="auto")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        sizes.append(len(batch))

    await drain(app, concurrency=1)
    assert sizes[0] == adaptive.START_SIZE
    assert max(sizes) == adaptive.MAX_SIZE
    assert sizes[: sizes.index(max(sizes))] == sorted(sizes[: sizes.index(max(sizes))])


async def test_auto_batch_size_shrinks_on_slow_batches(app, client, monkeypatch):
    monkeypatch.setattr(adaptive, "TARGET_SECONDS", 0.1)
    enqueue(client, "jobs", [{"n": i} for i in range(300)])
    sizes: list[int] = []

    @app.batch_handler("jobs", batch_size="auto")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        sizes.append(len(batch))
        await asyncio.sleep(0.003 * len(batch))  # 100 messages: 0.3 s, three times the target

    await drain(app, concurrency=1)
    # The second batch was fetched (at the old size) while the first ran.
    assert sizes[:2] == [100, 100]
    assert sizes[:-1] == sorted(sizes[:-1], reverse=True)
    assert sizes[3] <= 50 and min(sizes[:-1]) >= adaptive.MIN_SIZE


async def test_the_worker_registers_itself_and_signs_off(app, client, db, schema):
    enqueue(client, "jobs", [{"n": i} for i in range(25)])

    @app.batch_handler("jobs", batch_size=10)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        pass

    await drain(app, concurrency=1)  # one lane: batches of 10, 10 and 5
    [(pid, queues, stopped, batches, messages, beat_ok)] = rows(
        db,
        f"SELECT pid, queues, stopped_at IS NOT NULL, batches_done, messages_done,"
        f" heartbeat_at >= started_at FROM {schema}.worker",
    )
    import os

    assert (pid, queues, stopped, batches, messages, beat_ok) == (
        os.getpid(),
        ["jobs"],
        True,
        3,
        25,
        True,
    )


async def test_a_running_worker_beats_with_its_totals(app, client, db, schema, monkeypatch):
    monkeypatch.setattr(registry, "HEARTBEAT_SECONDS", 0.1)
    enqueue(client, "jobs", [{"n": i} for i in range(30)])

    @app.batch_handler("jobs", batch_size=10)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        pass

    task = await start_worker(app, concurrency=1)
    beat = (
        f"SELECT messages_done, heartbeat_at - started_at > interval '0.3 seconds'"
        f" FROM {schema}.worker WHERE stopped_at IS NULL"
    )
    await wait_for(lambda: rows(db, beat) == [(30, True)])
    await stop(task)
    assert rows(db, f"SELECT stopped_at IS NOT NULL FROM {schema}.worker") == [(True,)]


async def test_a_pool_of_one_connection_serves_four_lanes_and_transactions(
    pg_dsn, client, db, schema
):
    app = pgbatch.App(pg_dsn, schema=schema, pool_size=1)
    db.execute(f"CREATE TABLE {schema}.users (name text PRIMARY KEY)")
    enqueue(client, "users", [{"name": f"u{i}"} for i in range(200)], lease_seconds=2)

    @app.batch_handler("users", transactional=True, batch_size=10)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        await batch.conn.execute(
            f"INSERT INTO {schema}.users SELECT unnest(%s::text[])",
            ([m.payload["name"] for m in batch],),
        )
        await asyncio.sleep(0.01)

    report = await drain(app, concurrency=4)
    assert report.archived == 200 and report.lease_losses == 0
    assert rows(db, f"SELECT count(*) FROM {schema}.users") == [(200,)]


async def test_logging_is_per_batch_at_debug_and_never_per_message_at_info(app, client, caplog):
    enqueue(client, "jobs", [{"n": i} for i in range(300)])

    @app.batch_handler("jobs", batch_size=100)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        pass

    with caplog.at_level(logging.DEBUG, logger="pgbatch"):
        await drain(app, concurrency=1)  # one lane: three full batches
    per_batch = [r for r in caplog.records if r.getMessage().startswith("queue jobs: batch of 100")]
    assert len(per_batch) == 3 and all(r.levelno == logging.DEBUG for r in per_batch)
    info = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert len(info) <= 4  # started, drained, stopped: independent of the 300 messages


async def test_terminated_connections_are_survived(app, client, db, schema):
    enqueue(client, "jobs", [{"n": i} for i in range(400)])
    handled: list[int] = []
    terminated = []

    @app.batch_handler("jobs", batch_size=20)
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        handled.extend(m.payload["n"] for m in batch)
        if len(handled) >= 100 and not terminated:
            terminated.extend(
                rows(
                    db,
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name LIKE %s",
                    f"{app.application_name}%",
                )
            )
        await asyncio.sleep(0.01)

    report = await drain(app)
    assert len(terminated) >= 2 and all(ok for (ok,) in terminated)
    assert rows(db, f"SELECT count(DISTINCT id), count(*) FROM {schema}.archive") == [(400, 400)]
    # A reply lost with its connection after the archive committed counts as a loss.
    assert report.archived + report.lease_losses == 400


def test_run_worker_rejects_unknown_queues_and_bad_options(app):
    @app.batch_handler("jobs")
    async def handle(batch: pgbatch.Batch[Any]) -> None:
        pass

    with pytest.raises(pgbatch.errors.ConfigurationError, match="no batch handler for queue"):
        app.run_worker(["nope"])
    with pytest.raises(pgbatch.errors.InvalidArgument, match="concurrency"):
        app.run_worker(concurrency=0)
    with pytest.raises(pgbatch.errors.ConfigurationError, match="already has a batch handler"):
        app.batch_handler("jobs")(handle)
