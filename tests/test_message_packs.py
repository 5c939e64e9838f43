"""Packs (migration 0005): a plain batch travels in rows of up to PACK_SIZE messages, leased
and archived whole, and leaves that path by being unpacked with its lease unchanged."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql

import pgbatch
from pgbatch import operations as ops
from pgbatch.db import run_plan
from pgbatch.models import QueueInfo
from tests.test_queue_core import _nodes, done_notes, executed_plans, expire_leases


def pack_sizes(client: pgbatch.Client) -> list[int]:
    with client.db.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT cardinality(ids) FROM {} ORDER BY id").format(
                sql.Identifier(client.schema, "message_pack")
            )
        ).fetchall()
    return [row[0] for row in rows]


def stored_alone(client: pgbatch.Client) -> list[tuple[int, int, int | None]]:
    """(id, attempts, lease_token) of the messages stored one per row."""
    with client.db.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, attempts, lease_token FROM {} ORDER BY id").format(
                sql.Identifier(client.schema, "message")
            )
        ).fetchall()
    return [(row[0], row[1], row[2]) for row in rows]


def archived(client: pgbatch.Client) -> dict[int, tuple[Any, Any]]:
    """id -> (payload, result) of every archived message."""
    with client.db.connection() as conn:
        rows = conn.execute(
            sql.SQL("SELECT id, payload, result FROM {}").format(
                sql.Identifier(client.schema, "archive")
            )
        ).fetchall()
    return {row[0]: (row[1], row[2]) for row in rows}


def test_a_plain_batch_is_stored_in_packs_and_leased_and_archived_whole(client, queue):
    payloads = [{"i": i, "text": f"caf\u00e9 \\ \t {i}"} for i in range(250)]
    ids = queue.batch_enqueue(payloads)
    assert pack_sizes(client) == [100, 100, 50]
    assert stored_alone(client) == []
    assert queue.stats().ready == 250
    taken = queue.dequeue_many(250)
    assert [m.id for m in taken] == ids
    assert [m.payload for m in taken] == payloads
    assert {m.pack_id for m in taken} == {ids[0], ids[100], ids[200]}
    assert len({m.lease_token for m in taken}) == 1 and all(m.attempts == 1 for m in taken)
    assert (queue.stats().ready, queue.stats().leased) == (0, 250)
    assert sorted(queue.archive_many(taken)) == ids
    assert pack_sizes(client) == [] and stored_alone(client) == []
    assert archived(client) == {i: (p, None) for i, p in zip(ids, payloads, strict=True)}
    assert queue.archive_many(taken) == []  # nothing held any more


def test_results_of_a_whole_pack_are_archived_per_message(client, queue):
    ids = queue.batch_enqueue([{"i": i} for i in range(100)])
    taken = queue.dequeue_many(100)
    results = [{"double": 2 * m.payload["i"]} if m.id % 2 else None for m in taken]
    assert sorted(queue.archive_many(taken, results=results)) == ids
    stored = archived(client)
    for message, result in zip(taken, results, strict=True):
        assert stored[message.id] == (message.payload, result)


def test_a_partial_archive_unpacks_the_rest_under_the_same_lease(client):
    queue = client.create_queue("jobs", max_attempts=5, backoff_base=60)
    ids = queue.batch_enqueue([{"i": i} for i in range(100)])
    taken = queue.dequeue_many(100)
    token = taken[0].lease_token
    assert sorted(queue.archive_many(taken[:40])) == ids[:40]
    assert pack_sizes(client) == []
    assert stored_alone(client) == [(i, 1, token) for i in ids[40:]]
    outcome = queue.fail_many(taken[40:], "no good")
    assert sorted(outcome.retried) == ids[40:] and outcome.dead == []
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.delayed, stats.archived) == (0, 0, 60, 40)


@pytest.mark.parametrize("operation", ["fail", "extend", "release"])
def test_per_message_operations_on_packed_messages_unpack_them_first(client, queue, operation):
    ids = queue.batch_enqueue([{"i": i} for i in range(200)])
    taken = queue.dequeue_many(200)
    one = [m for m in taken if m.id == ids[150]]
    if operation == "fail":
        assert queue.fail_many(one, "boom", delay=0).retried == [ids[150]]
    elif operation == "extend":
        before = one[0].lease_expires_at
        assert queue.extend_lease(one, seconds=600) == [ids[150]]
        assert one[0].lease_expires_at > before
    else:
        assert queue.release_many(one) == [ids[150]]
    # Only the second pack left its row; its other messages stay held under their lease.
    assert pack_sizes(client) == [100]
    assert [row[0] for row in stored_alone(client)] == ids[100:]
    rest = [m for m in taken if m.id != ids[150]]
    assert sorted(queue.archive_many(rest)) == sorted(m.id for m in rest)
    assert queue.stats().archived == 199


def test_an_unpack_rolled_back_with_the_callers_transaction_is_redone(client, queue):
    """A transactional handler settles inside its own transaction: when that rolls back, the
    pack is back in message_pack, and the next statement on its messages must unpack it
    again (review of 2026-11-30: they were marked unpacked and their fail did nothing)."""
    queue.batch_enqueue([{"i": i} for i in range(100)])
    held = queue.dequeue_many(100)
    with client.db.connection() as conn, pytest.raises(RuntimeError), conn.transaction():
        partial = ops.archive_many(client.queries, queue._target(), held[:60])
        assert len(run_plan(conn, partial)) == 60
        raise RuntimeError("the handler's transaction rolls back")
    assert pack_sizes(client) == [100] and stored_alone(client) == []
    outcome = queue.fail_many(held[:60], "rolled back", delay=0)
    assert sorted(outcome.retried) == [m.id for m in held[:60]]
    assert queue.archive_many(held[60:]) == [m.id for m in held[60:]]
    assert queue.archive_many(held[:60]) == []  # released by the fail, no longer held
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.archived) == (60, 0, 40)


def test_a_batch_smaller_than_a_pack_splits_it_in_order(client, queue):
    ids = queue.batch_enqueue([{"i": i} for i in range(200)])
    first = queue.dequeue_many(30)
    assert [m.id for m in first] == ids[:30]
    assert pack_sizes(client) == [30, 70, 100]  # split in two packs, nothing stored alone
    assert stored_alone(client) == []
    stats = queue.stats()
    assert (stats.ready, stats.leased) == (170, 30)
    second = queue.dequeue_many(100)
    # The rest keeps the pack's place: before the next pack.
    assert [m.id for m in second] == ids[30:130]
    assert sorted(queue.archive_many(first + second)) == ids[:130]
    assert [m.id for m in queue.dequeue_many(100)] == ids[130:]


def test_dequeue_order_is_priority_then_visibility_across_packs_and_messages(client, queue):
    early = queue.batch_enqueue([{"early": i} for i in range(100)])  # a pack
    later = queue.batch_enqueue([{"later": 0}])  # stored alone, visible after the pack
    urgent = queue.batch_enqueue([{"urgent": 0}], priority=5)
    low = queue.batch_enqueue([{"low": 0}], priority=-1)
    # A message stored alone that became visible after the oldest pack, and lower
    # priorities, come after the packs before them, in the same batch when it has room.
    assert [m.id for m in queue.dequeue_many(102)] == urgent + early + later
    assert [m.id for m in queue.dequeue_many(103)] == low


def test_an_expired_pack_is_leased_again_with_its_messages_as_crash_suspects(client):
    queue = client.create_queue("jobs", max_attempts=3)
    ids = queue.batch_enqueue([{"i": i} for i in range(100)])
    first = queue.dequeue_many(100)
    expire_leases(client, ids)
    again = queue.dequeue_many(100)
    assert [m.id for m in again] == ids
    assert all(m.after_expired_lease and m.attempts == 2 for m in again)
    assert again[0].lease_token != first[0].lease_token
    assert queue.archive_many(first) == []  # the lost lease is fenced off
    # Suspects are settled one at a time: the first unpacks the pack.
    assert queue.archive_many(again[:1]) == ids[:1]
    assert sorted(queue.archive_many(again[1:])) == ids[1:]


def test_an_expired_pack_after_its_final_attempt_is_dead_lettered(pg_dsn, client):
    from pgbatch.results import declare_interest

    once = client.create_queue("once", max_attempts=1)
    ids = once.batch_enqueue([{"i": i} for i in range(100)])
    assert len(once.dequeue_many(100)) == 100
    expire_leases(client, ids)
    client.db.run(declare_interest(client.queries, ["once"]), transaction=False)
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(client.done_channel)))
        assert once.dequeue_many(100) == []
        assert done_notes(listener) == ["once"]
    dead = once.dead_letters(limit=1000)
    assert sorted(d.id for d in dead) == ids
    assert {d.last_error for d in dead} == {"lease expired after the final attempt"}
    assert pack_sizes(client) == []


def test_a_paused_queue_hands_out_no_pack(client, queue):
    queue.batch_enqueue([{"i": i} for i in range(100)])
    client.pause_queue("jobs")
    assert queue.dequeue_many(100) == []
    client.resume_queue("jobs")
    assert len(queue.dequeue_many(100)) == 100


def test_purge_and_drop_count_and_remove_packed_messages(client, queue):
    queue.batch_enqueue([{"i": i} for i in range(150)])
    queue.batch_enqueue([{"alone": 1}])
    assert queue.purge() == 151
    assert pack_sizes(client) == [] and stored_alone(client) == []
    other = client.create_queue("other")
    other.batch_enqueue([{"i": i} for i in range(150)])
    client.drop_queue("other")
    assert pack_sizes(client) == []


class User(pydantic.BaseModel):
    email: str


def blocked_behind(pg_dsn: str, blocker: psycopg.Connection[Any]) -> bool:
    """Whether some session waits for a lock that ``blocker``'s session holds."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY (pg_blocking_pids(pid))",
            (blocker.info.backend_pid,),
        ).fetchone()
    return row is not None and row[0] > 0


def hold_open(
    conn: psycopg.Connection[Any], race: str, client: pgbatch.Client, queue_id: int
) -> None:
    """Leaves ``conn`` in a transaction that holds a pack's lock: a dequeue splitting one
    (the leased part a new row) or an unpack (the messages new rows of "message")."""
    if race == "split":
        statement = sql.SQL("SELECT count(*) FROM {}(%s, 30, 4242, 30, 'x', '{{}}')").format(
            sql.Identifier(client.schema, "message_pack_take")
        )
        assert conn.execute(statement, (queue_id,)).fetchone() == (1,)
    else:
        held = client.queue("jobs").dequeue_many(100)
        statement = sql.SQL("SELECT {}(%s, %s)").format(
            sql.Identifier(client.schema, "message_pack_unpack")
        )
        moved = conn.execute(statement, ([held[0].pack_id], [held[0].lease_token])).fetchone()
        assert moved == (100,)


@pytest.mark.parametrize("race", ["split", "unpack"])
@pytest.mark.parametrize("removal", ["purge", "drop"])
def test_purge_and_drop_remove_what_a_concurrent_dequeue_or_unpack_wrote(
    pg_dsn, client, queue, removal, race
):
    """A dequeue splits a pack, or its holder unpacks it, while the purge waits for its lock:
    they write rows the purge's snapshot does not see; its next pass removes them (review)."""
    queue.batch_enqueue([{"i": i} for i in range(200)])
    outcome: list[Any] = []
    with psycopg.connect(pg_dsn) as holder:
        hold_open(holder, race, client, queue.info.id)

        def remove() -> None:
            if removal == "purge":
                outcome.append(queue.purge())
            else:
                outcome.append(client.drop_queue("jobs"))

        remover = threading.Thread(target=remove)
        remover.start()
        deadline = time.monotonic() + 10
        while not blocked_behind(pg_dsn, holder):
            assert time.monotonic() < deadline, "the purge never waited for the pack's lock"
            time.sleep(0.01)
        holder.commit()
        remover.join(timeout=10)
    assert pack_sizes(client) == [] and stored_alone(client) == []
    if removal == "purge":
        assert outcome == [200]


@pytest.mark.parametrize(
    ("ids", "payloads"),
    [
        ("{1,2,3}", '{"not": "an array"}'),
        ("{1,2,3}", "[1, 2]"),
        ("{2,3}", "[1, 2]"),  # the pack's id is not its first message's
        ("{1,NULL}", "[1, 2]"),
        ("{{1,2}}", "[1, 2]"),
        ("[0:1]={0,1}", "[1, 2]"),  # ids[1] is the second id
    ],
)
def test_a_pack_that_is_not_whole_is_refused_at_its_insert(client, queue, ids, payloads):
    """One bad row would fail every dequeue of its queue (migration 0007, review)."""
    with client.db.connection() as conn, pytest.raises(psycopg.errors.CheckViolation):
        conn.execute(
            sql.SQL("INSERT INTO {} (id, queue_id, ids, payloads) VALUES (1, %s, %s, %s)").format(
                sql.Identifier(client.schema, "message_pack")
            ),
            (queue.info.id, ids, payloads),
        )
    assert pack_sizes(client) == []


def test_messages_that_fail_the_model_are_buried_out_of_their_pack(client):
    raw = client.create_queue("users")
    ids = raw.batch_enqueue(
        [{"email": f"u{i}@x.org"} if i != 7 else {"nope": i} for i in range(100)]
    )
    typed = client.queue("users", model=User)
    taken = typed.dequeue_many(100)
    assert [m.id for m in taken] == ids[:7] + ids[8:]
    assert [d.id for d in raw.dead_letters(limit=10)] == [ids[7]]
    assert sorted(typed.archive_many(taken)) == ids[:7] + ids[8:]


def test_packs_are_cut_by_count_and_by_bytes() -> None:
    info = QueueInfo(7, "q", 30.0, 5, 1.0, 600.0, 1 << 20, False, None)  # type: ignore[arg-type]
    big = "x" * (ops.PACK_MAX_BYTES // 3)
    payloads: list[Any] = [{"i": i} for i in range(250)] + [big] * 4
    ids = list(range(1000, 1000 + len(payloads)))
    rows = b"".join(ops.pack_copy_chunks(ids, info, payloads, None)).splitlines()
    sizes = [row.split(b"\t")[2].count(b",") + 1 for row in rows]
    # 50 small ones and two large ones fit under PACK_MAX_BYTES, the third would not.
    assert sizes == [100, 100, 52, 2]
    first, queue_id, pack_ids, _ = rows[0].split(b"\t")
    assert (first, queue_id) == (b"1000", b"7")
    assert pack_ids == b"{" + b",".join(b"%d" % i for i in range(1000, 1100)) + b"}"
    assert all(len(row) < ops.PACK_MAX_BYTES + 1000 for row in rows)


def test_taking_packs_walks_their_index_past_leased_ones(client, queue):
    """A dequeue reads about the packs it takes, not the leased ones before them, whatever
    the table's statistics (none here: it was never analyzed)."""
    queue.batch_enqueue([{"i": i} for i in range(20_000)])
    queue.dequeue_many(15_000)  # 150 leased packs in front of the ready ones
    plans = executed_plans(
        client,
        client.queries.message_dequeue_many,
        {
            "queue_id": queue.info.id,
            "limit": 250,
            "lease_seconds": 30,
            "done_channel": client.done_channel,
        },
    )
    nodes = [n for plan in plans for n in _nodes(plan["Plan"])]
    assert not {n["Node Type"] for n in nodes} & {"Sort", "Hash Join", "Merge Join"}
    on_packs = [n for n in nodes if n.get("Relation Name") == "message_pack"]
    assert on_packs and not [n for n in on_packs if n["Node Type"] == "Seq Scan"]
    assert any(n.get("Index Name") == "message_pack_dequeue_idx" for n in nodes)
    scans = [n for n in on_packs if "Scan" in n["Node Type"]]
    assert max(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 10
