"""Enqueue: small JSON messages with ``batch_enqueue`` in batches, one client, vs limit (a)."""

from __future__ import annotations

import asyncio
from typing import Any

import pgbatch
from benchmarks import database as db
from benchmarks.harness import Case, Comparison, Context, ScenarioResult, stopwatch
from benchmarks.pgbench import find_pgbench
from benchmarks.scenarios import scenario
from benchmarks.scenarios.limit import insert_case


def user_payloads(count: int, start: int = 0) -> list[dict[str, Any]]:
    """The issue's payloads: ``{"user_id": i, "email": "u{i}@example.com"}``."""
    return [{"user_id": i, "email": f"u{i}@example.com"} for i in range(start, start + count)]


def chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def enqueue_all(queue: pgbatch.Queue[Any], batches: list[list[Any]]) -> float:
    """Seconds to write every batch with batch_enqueue, one transaction each."""
    with stopwatch() as elapsed:
        for batch in batches:
            queue.batch_enqueue(batch)
    return elapsed()


def sync_rate(dsn: str, count: int, batch_size: int) -> float:
    batches = chunks(user_payloads(count), batch_size)  # built before the clock starts
    with db.fresh_schema(dsn, "enqueue") as schema:
        with pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client:
            seconds = enqueue_all(client.create_queue(db.QUEUE_NAME), batches)
        _check_written(dsn, schema, count)
    return count / seconds


async def _async_enqueue(dsn: str, schema: str, batches: list[list[Any]]) -> float:
    async with pgbatch.connect_async(dsn, schema=schema, min_size=1, max_size=1) as client:
        queue = await client.create_queue(db.QUEUE_NAME)
        with stopwatch() as elapsed:
            for batch in batches:
                await queue.batch_enqueue(batch)
        return elapsed()


def async_rate(dsn: str, count: int, batch_size: int) -> float:
    batches = chunks(user_payloads(count), batch_size)
    with db.fresh_schema(dsn, "enqueue") as schema:
        seconds = asyncio.run(_async_enqueue(dsn, schema, batches))
        _check_written(dsn, schema, count)
    return count / seconds


def _check_written(dsn: str, schema: str, count: int) -> None:
    written = db.count(dsn, schema, "queued")
    if written != count:
        raise RuntimeError(f"enqueue wrote {written} of {count} messages")


@scenario("enqueue", "Enqueue: small JSON messages with batch_enqueue, one client")
def enqueue(ctx: Context, result: ScenarioResult) -> None:
    count, batch = ctx.sizes.messages, ctx.sizes.enqueue_batch
    limit = [insert_case(ctx, "enqueue.limit")] if find_pgbench() else []
    ctx.rounds(
        result,
        [
            *limit,
            Case(
                "enqueue.sync",
                f"pgbatch batch_enqueue, {count:,} in batches of {batch:,}",
                "msg/s",
                lambda: sync_rate(ctx.dsn, count, batch),
            ),
            Case(
                "enqueue.async",
                f"pgbatch async batch_enqueue, {count:,} in batches of {batch:,}",
                "msg/s",
                lambda: async_rate(ctx.dsn, count, batch),
            ),
        ],
    )
    result.comparisons += [
        Comparison("enqueue (sync) vs PostgreSQL alone", "enqueue.sync", "enqueue.limit", 0.8),
        Comparison("enqueue (async) vs PostgreSQL alone", "enqueue.async", "enqueue.limit", 0.8),
    ]
