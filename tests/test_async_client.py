"""The async client on a real PostgreSQL: the core semantics through ``pgbatch.connect_async``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql

import pgbatch
from pgbatch import errors
from pgbatch.migrate import available_migrations


class Signup(pydantic.BaseModel):
    email: str
    age: int


@pytest.fixture
async def aqueue(async_client: pgbatch.AsyncClient) -> pgbatch.AsyncQueue[Any]:
    return await async_client.create_queue("jobs", lease_seconds=30, max_attempts=3)


async def expire_leases(client: pgbatch.AsyncClient, ids: list[int]) -> None:
    """Forges the state after a lease ran out, instead of sleeping through it."""
    async with client.db.connection() as conn:
        await conn.execute(
            sql.SQL(
                "UPDATE {} SET visible_at = now() - interval '1 second' WHERE id = ANY(%s)"
            ).format(sql.Identifier(client.schema, "message")),
            (ids,),
        )


async def test_enqueue_dequeue_archive_and_stats(aqueue: pgbatch.AsyncQueue[Any]) -> None:
    payloads = [{"n": i, "text": f"caf\u00e9 \\ {i}"} for i in range(300)]
    ids = await aqueue.batch_enqueue(payloads)  # the COPY path
    small = await aqueue.batch_enqueue([{"small": 1}, {"small": 2}])  # the insert path
    assert len(ids) == 300 and ids == sorted(ids) and small[0] > ids[-1]
    taken = await aqueue.dequeue_many(250)
    assert [m.id for m in taken] == ids[:250]
    assert [m.payload for m in taken] == payloads[:250]
    assert all(m.attempts == 1 for m in taken)
    stats = await aqueue.stats()
    assert (stats.ready, stats.leased, stats.archived) == (52, 250, 0)
    assert sorted(await aqueue.archive_many(taken)) == ids[:250]
    assert await aqueue.archive_many(taken) == []  # nothing held any more
    stats = await aqueue.stats()
    assert (stats.ready, stats.leased, stats.archived, stats.archived_last_minute) == (
        52,
        0,
        250,
        250,
    )
    assert stats.oldest_ready_age >= 0


async def test_leased_messages_stay_hidden_and_a_stale_consumer_is_fenced(
    async_client: pgbatch.AsyncClient, aqueue: pgbatch.AsyncQueue[Any]
) -> None:
    [message_id] = await aqueue.batch_enqueue([{"x": 1}])
    [first] = await aqueue.dequeue_many(5)
    assert await aqueue.dequeue_many(5) == []
    await expire_leases(async_client, [message_id])
    [second] = await aqueue.dequeue_many(5)
    assert second.id == message_id and second.attempts == 2
    assert second.lease_token != first.lease_token
    assert await aqueue.archive_many([first]) == []
    assert await aqueue.fail_many([first], "late") == pgbatch.FailOutcome()
    assert await aqueue.extend_lease([first], seconds=60) == []
    assert await aqueue.archive_many([second]) == [message_id]


async def test_extend_and_release(aqueue: pgbatch.AsyncQueue[Any]) -> None:
    await aqueue.batch_enqueue([{"x": 1}, {"x": 2}])
    taken = await aqueue.dequeue_many(2, lease_seconds=1)
    before = taken[0].lease_expires_at
    assert sorted(await aqueue.extend_lease(taken, seconds=120)) == sorted(m.id for m in taken)
    assert taken[0].lease_expires_at > before + timedelta(seconds=60)
    assert sorted(await aqueue.release_many(taken)) == sorted(m.id for m in taken)
    again = await aqueue.dequeue_many(2)
    assert sorted(m.id for m in again) == sorted(m.id for m in taken)
    assert all(m.attempts == 1 for m in again)  # a release is not an attempt


async def test_fail_then_dead_letters_then_requeue(
    async_client: pgbatch.AsyncClient, aqueue: pgbatch.AsyncQueue[Any]
) -> None:
    [message_id] = await aqueue.batch_enqueue([{"job": "x"}])
    for attempt in (1, 2):
        [message] = await aqueue.dequeue_many(1)
        assert message.attempts == attempt
        outcome = await aqueue.fail_many([message], f"boom {attempt}", delay=60)
        assert outcome.retried == [message_id] and outcome.dead == []
        assert await aqueue.dequeue_many(1) == []
        assert (await aqueue.stats()).delayed == 1
        await expire_leases(async_client, [message_id])
    [message] = await aqueue.dequeue_many(1)
    assert message.last_error == "boom 2"
    assert (await aqueue.fail_many([message], "final")).dead == [message_id]
    [dead] = await aqueue.dead_letters()
    assert (dead.id, dead.payload, dead.attempts, dead.last_error) == (
        message_id,
        {"job": "x"},
        3,
        "final",
    )
    assert (await aqueue.stats()).dead == 1
    assert await aqueue.requeue_dead() == 1
    [back] = await aqueue.dequeue_many(1)
    assert back.id == message_id and back.attempts == 1
    assert await aqueue.dead_letters() == []


async def test_dedup_returns_the_existing_id(aqueue: pgbatch.AsyncQueue[Any]) -> None:
    first = await aqueue.enqueue({"v": 1}, dedup_key="signup-42")
    assert await aqueue.enqueue({"v": 2}, dedup_key="signup-42") == first
    ids = await aqueue.batch_enqueue([{"v": 3}, {"v": 4}], dedup_keys=["b", "signup-42"])
    assert ids[1] == first and ids[0] != first
    taken = await aqueue.dequeue_many(10)
    assert sorted(m.payload["v"] for m in taken) == [1, 3]
    await aqueue.archive_many(taken)
    assert await aqueue.enqueue({"v": 5}, dedup_key="signup-42") != first


async def test_delay_and_priority(aqueue: pgbatch.AsyncQueue[Any]) -> None:
    await aqueue.enqueue({"n": "later"}, delay=timedelta(seconds=0.3))
    await aqueue.enqueue({"n": "low"})
    await aqueue.enqueue({"n": "high"}, priority=3)
    assert [m.payload["n"] for m in await aqueue.dequeue_many(10)] == ["high", "low"]
    assert (await aqueue.stats()).delayed == 1
    await asyncio.sleep(0.4)
    assert [m.payload["n"] for m in await aqueue.dequeue_many(10)] == ["later"]


async def test_enqueue_in_the_callers_async_transaction_rolls_back_and_commits_with_it(
    pg_dsn: str, aqueue: pgbatch.AsyncQueue[Any]
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        for size in (3, 200):  # the insert and the COPY paths
            await aqueue.batch_enqueue([{"tx": "rolled back"}] * size, conn=conn)
        await conn.rollback()
        assert (await aqueue.stats()).ready == 0
        ids = await aqueue.batch_enqueue([{"tx": "kept"}] * 150, conn=conn)
        one = await aqueue.enqueue({"tx": "kept"}, conn=conn)
        assert (await aqueue.stats()).ready == 0  # uncommitted: invisible to others
        await conn.commit()
    taken = await aqueue.dequeue_many(500)
    assert sorted(m.id for m in taken) == [*ids, one]
    assert {m.payload["tx"] for m in taken} == {"kept"}


async def test_bad_payload_in_the_callers_async_transaction_leaves_it_usable(
    pg_dsn: str, aqueue: pgbatch.AsyncQueue[Any]
) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        await aqueue.enqueue({"first": True}, conn=conn)
        bad: list[Any] = [{"i": i} for i in range(200)]
        bad[150] = {"nan": float("nan")}
        with pytest.raises(errors.PayloadNotJSON) as caught:
            await aqueue.batch_enqueue(bad, conn=conn)
        assert caught.value.index == 150
        await aqueue.enqueue({"second": True}, conn=conn)
        await conn.commit()
    taken = await aqueue.dequeue_many(500)
    assert [m.payload for m in taken] == [{"first": True}, {"second": True}]


async def test_typed_async_queue(async_client: pgbatch.AsyncClient) -> None:
    queue = await async_client.create_queue("signups", model=Signup, max_attempts=1)
    await queue.batch_enqueue([{"email": "a@x.org", "age": "5"}, Signup(email="b@x.org", age=6)])
    with pytest.raises(errors.PayloadValidationError) as caught:
        await queue.batch_enqueue([{"email": "c@x.org", "age": 1}, {"email": "d@x.org"}])
    assert caught.value.index == 1 and caught.value.fields == ("age",)
    taken = await queue.dequeue_many(10)
    assert [m.payload for m in taken] == [
        Signup(email="a@x.org", age=5),
        Signup(email="b@x.org", age=6),
    ]
    await queue.fail_many(taken, "bounced")
    dead = await (await async_client.queue("signups", model=Signup)).dead_letters()
    assert [d.payload for d in dead] == [m.payload for m in taken]


async def test_queue_management(async_client: pgbatch.AsyncClient) -> None:
    with pytest.raises(errors.QueueNotFound):
        await async_client.queue("missing")
    with pytest.raises(errors.InvalidQueueName):
        await async_client.create_queue("no spaces")
    first = await async_client.create_queue("emails", lease_seconds=12)
    again = await async_client.create_queue("emails", lease_seconds=99)
    assert again.info == first.info and again.info.lease_seconds == 12
    assert [q.name for q in await async_client.queues()] == ["emails"]
    await async_client.pause_queue("emails")
    await first.enqueue({"x": 1})
    assert await first.dequeue_many(5) == []
    await async_client.resume_queue("emails")
    assert len(await first.dequeue_many(5)) == 1
    await first.enqueue({"x": 2})
    assert await first.purge() == 2  # the leased one and the ready one
    await async_client.drop_queue("emails")
    assert await async_client.queues() == []


async def test_concurrent_async_consumers_share_without_duplicates(
    aqueue: pgbatch.AsyncQueue[Any],
) -> None:
    ids = await aqueue.batch_enqueue([{"i": i} for i in range(2000)])

    async def consume() -> list[int]:
        seen: list[int] = []
        while batch := await aqueue.dequeue_many(50, lease_seconds=300):
            archived = await aqueue.archive_many(batch)
            assert sorted(archived) == sorted(m.id for m in batch)
            seen += archived
        return seen

    per_task = await asyncio.gather(*(consume() for _ in range(6)))
    flat = [i for seen in per_task for i in seen]
    assert len(flat) == len(set(flat)) and sorted(flat) == ids
    assert (await aqueue.stats()).archived == 2000


@pytest.fixture
async def fresh_schema_name(pg_dsn: str) -> AsyncIterator[str]:
    name = f"t_amig_{uuid.uuid4().hex[:12]}"
    yield name
    async with await psycopg.AsyncConnection.connect(pg_dsn, autocommit=True) as conn:
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


async def test_async_migrate_and_await_style_open(pg_dsn: str, fresh_schema_name: str) -> None:
    client = await pgbatch.connect_async(pg_dsn, schema=fresh_schema_name)
    try:
        assert await client.migrate() == [m.version for m in available_migrations()]
        assert await client.migrate() == []
        queue = await client.create_queue("after")
        await queue.enqueue({"ok": True})
        assert len(await queue.dequeue_many(1)) == 1
    finally:
        await client.close()
