"""The first seed's benchmark on pgbatch: "create user" calls written one call each.

Each call submits one user and waits for its own result (the id of the inserted row). pgbatch
coalesces the submits into batch_enqueue transactions; a worker's transactional batch handler
inserts each batch of users with one statement; every caller gets its row's id back. The same
calls are then made with one transaction per call (an INSERT and a COMMIT each, on a pool of
connections), in the same run, and both times are printed with the speed-up.

    python -m workers.transparent_batching                       # embedded default server
    python -m workers.transparent_batching --dsn postgresql://... --sizes 1000,10000
    python -m workers.transparent_batching --callers async       # asyncio tasks only

Callers: ``threads`` (a pool of --threads threads, each call one ``q.submit(...).result()``),
``async`` (one asyncio task per call, ``await (await aq.submit(...)).result()``), or ``both``.
The worker runs in a subprocess (its own interpreter, as in production), started before the
clock and kept for every size; --handler chooses an async handler (on the worker's event
loop, the default) or a sync one (in the worker's threads).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
import psycopg_pool
from psycopg import sql

import pgbatch

QUEUE = "create_user"
SEED_BATCHED = {1_000: 0.07, 10_000: 0.85, 100_000: 10.9}  # the seed's figures, in seconds


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workers.transparent_batching",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dsn", default=None, help="default: $PGBATCH_DSN, $DATABASE_URL, embedded"
    )
    parser.add_argument("--schema", default="transparent_batching", help="a schema of its own")
    parser.add_argument("--sizes", default="1000,10000,100000", help="numbers of calls")
    parser.add_argument("--callers", choices=["threads", "async", "both"], default="both")
    parser.add_argument("--threads", type=int, default=500, help="size of the caller pool")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="configure_batching")
    parser.add_argument("--max-batch", type=int, default=1000, help="configure_batching")
    parser.add_argument("--connections", type=int, default=16, help="pool of the unbatched run")
    parser.add_argument("--no-unbatched", action="store_true", help="skip the comparison")
    parser.add_argument("--concurrency", type=int, default=2, help="the worker's batches at once")
    parser.add_argument("--batch-size", type=int, default=1000, help="the worker's batch size")
    parser.add_argument("--handler", choices=["async", "sync"], default="async")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# ---------------------------------------------------------------- the worker (a subprocess)


def run_worker(dsn: str, schema: str, concurrency: int, batch_size: int, handler: str) -> None:
    app = pgbatch.App(dsn, schema=schema)
    users = sql.Identifier(schema, "users")
    insert = sql.SQL(
        "INSERT INTO {} (name, email) SELECT * FROM unnest(%s::text[], %s::text[])"
        " RETURNING id, email"
    ).format(users)

    def complete(batch: pgbatch.Batch[dict[str, Any]], rows: list[tuple[Any, ...]]) -> None:
        id_by_email = dict((email, row_id) for row_id, email in rows)
        for msg in batch:
            batch.complete(msg, {"id": id_by_email[msg.payload["email"]]})

    def columns(batch: pgbatch.Batch[dict[str, Any]]) -> tuple[list[str], list[str]]:
        return [m.payload["name"] for m in batch], [m.payload["email"] for m in batch]

    # The batch of users in one statement, in the transaction that archives the batch; each
    # caller gets its row's id. An async handler runs on the worker's event loop, a sync one
    # in the worker's threads.
    if handler == "async":

        @app.batch_handler(QUEUE, batch_size=batch_size, transactional=True)
        async def create_users(batch: pgbatch.Batch[dict[str, Any]]) -> None:
            assert isinstance(batch.conn, psycopg.AsyncConnection)
            complete(batch, await (await batch.conn.execute(insert, columns(batch))).fetchall())

    else:

        @app.batch_handler(QUEUE, batch_size=batch_size, transactional=True)
        def create_users_sync(batch: pgbatch.Batch[dict[str, Any]]) -> None:
            assert isinstance(batch.conn, psycopg.Connection)
            complete(batch, batch.conn.execute(insert, columns(batch)).fetchall())

    app.run_worker(concurrency=concurrency)


def start_worker(dsn: str, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PGBATCH_DSN": dsn}  # not on the command line, where ps shows it
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "workers.transparent_batching", "--worker"),
            *("--schema", args.schema, "--concurrency", str(args.concurrency)),
            *("--batch-size", str(args.batch_size), "--handler", args.handler),
        ],
        env=env,
    )


def stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        worker.wait(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        worker.wait()


# ---------------------------------------------------------------- setup


def prepare(client: pgbatch.Client) -> None:
    """The schema, the queue and an empty users table."""
    client.migrate()
    client.create_queue(QUEUE).purge()
    with client.db.connection() as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                " name text NOT NULL, email text NOT NULL UNIQUE)"
            ).format(sql.Identifier(client.schema, "users"))
        )


def truncate_users(client: pgbatch.Client) -> None:
    with client.db.connection() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(client.schema, "users")))


def count_users(client: pgbatch.Client) -> int:
    with client.db.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(client.schema, "users"))
        ).fetchone()
    return int(row[0]) if row else 0


def user(i: int) -> dict[str, str]:
    return {"name": f"user {i}", "email": f"u{i}@example.com"}


def check(client: pgbatch.Client, results: list[Any], n: int) -> None:
    ids = {r["id"] for r in results}
    if len(ids) != n or count_users(client) != n:
        raise SystemExit(f"wrong results: {len(ids)} distinct ids, {count_users(client)} rows")


# ---------------------------------------------------------------- the three ways to call


def in_thread_pool(call: Callable[[int], Any], n: int, threads: int) -> tuple[list[Any], float]:
    """call(0) ... call(n - 1) from a pool of threads, each taking the next number when free.

    The pool is started before the clock, as a server's threads are before its requests
    (starting 500 threads alone takes about 35 ms here); the clock runs from the moment they
    are all let go to the last result.
    """
    results: list[Any] = [None] * n
    failures: list[BaseException] = []
    numbers = itertools.count()  # next() on a count is atomic under the GIL
    size = min(threads, n)
    ready = threading.Barrier(size + 1)

    def work() -> None:
        try:
            ready.wait()
            while not failures and (i := next(numbers)) < n:
                results[i] = call(i)
        except BaseException as exc:
            failures.append(exc)

    pool = [threading.Thread(target=work) for _ in range(size)]
    for thread in pool:
        thread.start()
    ready.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    return results, seconds


def batched_with_threads(
    queue: pgbatch.Queue[Any], n: int, threads: int
) -> tuple[list[Any], float]:
    def create_user(i: int) -> Any:
        return queue.submit(user(i)).result(timeout=120)

    return in_thread_pool(create_user, n, threads)


def batched_with_tasks(
    dsn: str, schema: str, n: int, settings: dict[str, Any]
) -> tuple[list[Any], float]:
    async def main() -> tuple[list[Any], float]:
        async with pgbatch.connect_async(dsn, schema=schema) as client:
            queue = await client.queue(QUEUE)
            queue.configure_batching(**settings)
            # Start the result listener before the clock, as the sync client's warm-up call
            # did for the threads (message 0 never exists).
            with contextlib.suppress(TimeoutError):
                await queue.result(0, timeout=0.1)

            async def create_user(i: int) -> Any:
                return await (await queue.submit(user(i))).result(timeout=120)

            started = time.perf_counter()
            results = await asyncio.gather(*(create_user(i) for i in range(n)))
            return list(results), time.perf_counter() - started

    return asyncio.run(main())


def unbatched(
    client: pgbatch.Client, n: int, threads: int, connections: int
) -> tuple[list[Any], float]:
    """One transaction per call: INSERT ... RETURNING id, COMMIT."""
    insert = sql.SQL("INSERT INTO {} (name, email) VALUES (%s, %s) RETURNING id").format(
        sql.Identifier(client.schema, "users")
    )
    with psycopg_pool.ConnectionPool(
        client.dsn, min_size=connections, max_size=connections, open=True
    ) as pool:

        def create_user(i: int) -> Any:
            with pool.connection() as conn:  # commits on the way out
                row = conn.execute(insert, (user(i)["name"], user(i)["email"])).fetchone()
                return {"id": row[0] if row else None}

        return in_thread_pool(create_user, n, min(threads, connections * 4))


# ---------------------------------------------------------------- main


def batching_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_batch": args.max_batch, "max_delay_ms": args.max_delay_ms}


def measure(args: argparse.Namespace, client: pgbatch.Client, n: int) -> None:
    queue = client.queue(QUEUE)
    queue.configure_batching(**batching_settings(args))
    line = [f"{n:>9,} calls:"]
    best: float | None = None
    if args.callers in ("threads", "both"):
        truncate_users(client)
        results, seconds = batched_with_threads(queue, n, args.threads)
        check(client, results, n)
        line.append(f"batched {seconds:7.3f} s ({args.threads} threads)")
        best = seconds
    if args.callers in ("async", "both"):
        truncate_users(client)
        results, seconds = batched_with_tasks(client.dsn, client.schema, n, batching_settings(args))
        check(client, results, n)
        line.append(f"batched {seconds:7.3f} s (asyncio tasks)")
        best = seconds if best is None else min(best, seconds)
    assert best is not None
    line.append(f"seed {SEED_BATCHED.get(n, float('nan')):.2f} s")
    if not args.no_unbatched:
        truncate_users(client)
        results, seconds = unbatched(client, n, args.threads, args.connections)
        check(client, results, n)
        line.append(f"one transaction per call {seconds:7.3f} s ({seconds / best:.1f}x)")
    print(" | ".join(line), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        dsn = os.environ["PGBATCH_DSN"]
        run_worker(dsn, args.schema, args.concurrency, args.batch_size, args.handler)
        return 0
    sizes = [int(size) for size in args.sizes.split(",")]
    with pgbatch.connect(args.dsn, schema=args.schema) as client:
        prepare(client)
        worker = start_worker(client.dsn, args)
        try:
            client.queue(QUEUE).submit(user(-1)).result(timeout=60)  # the worker is up
            for n in sizes:
                measure(args, client, n)
        finally:
            stop_worker(worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
