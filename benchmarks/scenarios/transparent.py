"""Transparent batching (the first seed): "create user" calls written one call each.

Both sides are the same caller code, N coroutines gathered, each making one call and
waiting for its own user id:

- batched: ``await (await queue.submit(user)).result()``; pgbatch coalesces the submits into
  batch_enqueue transactions, one idle worker process (a transactional async handler)
  creates each batch's users with one INSERT and completes each message with its user id;
- one transaction per call: ``INSERT ... RETURNING id`` on a pool of connections.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import psycopg_pool

import pgbatch
from benchmarks import database as db
from benchmarks.consumers import Consumers, serving_worker
from benchmarks.harness import Case, Comparison, Context, ScenarioResult
from benchmarks.scenarios import Skip, scenario
from benchmarks.scenarios.drain import require_worker_runtime
from benchmarks.scenarios.enqueue import user_payloads

WORKER = Consumers(
    "worker-serve",
    batch_size=1000,
    concurrency=4,
    extra={"handler": "create_users", "transactional": True},
)
T = TypeVar("T")
PER_CALL_CONNECTIONS = 16
BATCHED_TARGET_SECONDS = {100_000: 3.0}
SPEED_UP_TARGETS = {100_000: 5.0}
PER_CALL_ONCE_FROM = 100_000
# Every call waits its turn for one of the connections: 100,000 calls wait long.
PER_CALL_POOL_WAIT = 900.0


async def run_all(calls: Iterable[Coroutine[Any, Any, T]]) -> list[T]:
    """Runs the calls concurrently; the first failure cancels the others (a TaskGroup)."""
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(call) for call in calls]
    return [task.result() for task in tasks]


def _users(count: int) -> list[dict[str, Any]]:
    return [{"name": f"user {p['user_id']}", "email": p["email"]} for p in user_payloads(count)]


async def _batched(dsn: str, schema: str, users: list[dict[str, Any]]) -> float:
    async with pgbatch.connect_async(dsn, schema=schema) as client:
        queue = await client.queue(db.QUEUE_NAME)

        async def create_user(user: dict[str, Any]) -> Any:
            pending = await queue.submit(user)
            return await pending.result(timeout=300)

        start = time.perf_counter()
        ids = await run_all(create_user(user) for user in users)
        seconds = time.perf_counter() - start
    if len(set(ids)) != len(users):
        raise RuntimeError(f"{len(set(ids))} distinct user ids for {len(users)} calls")
    return seconds


def batched_seconds(dsn: str, count: int) -> float:
    users = _users(count)
    with db.fresh_schema(dsn, "transparent") as schema:
        db.create_bench_queue(dsn, schema)
        with db.connect(dsn) as conn:
            conn.execute(db.helper("bench_user_create_table", schema))
        with (
            db.ArchiveWatcher(dsn, schema) as watcher,
            serving_worker(dsn, schema, WORKER, watcher),
        ):
            seconds = asyncio.run(_batched(dsn, schema, users))
        _check_users(dsn, schema, count + 1)  # + the warm-up message's user
    return seconds


async def _per_call(dsn: str, schema: str, users: list[dict[str, Any]]) -> float:
    insert_one = db.helper("bench_user_insert_one", schema)
    async with psycopg_pool.AsyncConnectionPool(
        dsn,
        min_size=PER_CALL_CONNECTIONS,
        max_size=PER_CALL_CONNECTIONS,
        kwargs={"autocommit": True},
        timeout=PER_CALL_POOL_WAIT,
        open=False,
    ) as pool:
        await pool.wait()

        async def create_user(user: dict[str, Any]) -> Any:
            async with pool.connection() as conn:
                row = await (await conn.execute(insert_one, user)).fetchone()
            return None if row is None else row[0]

        start = time.perf_counter()
        await run_all(create_user(user) for user in users)
        return time.perf_counter() - start


def per_call_seconds(dsn: str, count: int) -> float:
    users = _users(count)
    with db.fresh_schema(dsn, "transparent") as schema:
        with db.connect(dsn) as conn:
            conn.execute(db.helper("bench_user_create_table", schema))
        seconds = asyncio.run(_per_call(dsn, schema, users))
        _check_users(dsn, schema, count)
    return seconds


def _check_users(dsn: str, schema: str, expected: int) -> None:
    created = int(db.scalar(dsn, db.helper("bench_user_count", schema)))
    if created != expected:
        raise RuntimeError(f"{created} users created, {expected} expected")


def _batched_case(ctx: Context, count: int) -> Case:
    return Case(
        f"transparent.batched.{count}",
        f"{count:,} calls, batched by submit",
        "s",
        lambda: batched_seconds(ctx.dsn, count),
        higher_is_better=False,
        target=BATCHED_TARGET_SECONDS.get(count),
    )


def _per_call_case(ctx: Context, count: int) -> Case:
    return Case(
        f"transparent.per_call.{count}",
        f"{count:,} calls, one transaction per call",
        "s",
        lambda: per_call_seconds(ctx.dsn, count),
        higher_is_better=False,
    )


@scenario("transparent", "Transparent batching: create-user calls written one call each")
def transparent(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    if not hasattr(pgbatch.AsyncQueue, "submit"):
        raise Skip("Queue.submit (transparent batching, issue 6) is not in this checkout yet")
    counts = ctx.sizes.transparent_counts
    ctx.rounds(result, [_batched_case(ctx, n) for n in counts])
    # One transaction per call is slow by nature (about 40 s for 100,000 here): the small
    # counts run every round, the largest once.
    ctx.rounds(result, [_per_call_case(ctx, n) for n in counts if n < PER_CALL_ONCE_FROM])
    ctx.rounds(result, [_per_call_case(ctx, n) for n in counts if n >= PER_CALL_ONCE_FROM], 1)
    result.comparisons += [
        Comparison(
            f"speed-up of batching, {n:,} calls",
            f"transparent.batched.{n}",
            f"transparent.per_call.{n}",
            SPEED_UP_TARGETS.get(n),
        )
        for n in ctx.sizes.transparent_counts
    ]
    result.notes.append(
        f"Batched: submit's defaults (max_batch 1,000, max_delay 5 ms), one worker process"
        f" (batch {WORKER.batch_size}, concurrency {WORKER.concurrency}, transactional async"
        f" handler). Per call: {PER_CALL_CONNECTIONS} pooled connections, autocommit."
        " Both from N gathered coroutines; the clock runs from the first call to the last"
        f" result. One transaction per call for {PER_CALL_ONCE_FROM:,} calls runs once."
    )
