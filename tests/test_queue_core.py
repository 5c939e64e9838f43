"""The core queue on a real PostgreSQL: enqueue, lease, fence, fail, dead letters, dedup."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import orjson
import psycopg
import pydantic
import pytest
from psycopg import sql

import pgbatch
from pgbatch import errors
from pgbatch import operations as ops


def expire_leases(client: pgbatch.Client, ids: list[int]) -> None:
    """Forges the state after a lease ran out, instead of sleeping through it (for a message
    of a pack, the whole pack's lease)."""
    with client.db.connection() as conn:
        conn.execute(
            sql.SQL(
                "UPDATE {} SET visible_at = now() - interval '1 second' WHERE id = ANY(%s)"
            ).format(sql.Identifier(client.schema, "message")),
            (ids,),
        )
        conn.execute(
            sql.SQL(
                "UPDATE {} SET visible_at = now() - interval '1 second' WHERE ids && %s::bigint[]"
            ).format(sql.Identifier(client.schema, "message_pack")),
            (ids,),
        )


def test_batch_enqueue_returns_ids_in_input_order_and_dequeue_gets_them(queue):
    payloads = [{"n": i, "text": f"caf\u00e9 \\ {i}\t"} for i in range(500)]
    ids = queue.batch_enqueue(payloads)
    assert ids == sorted(ids) and len(set(ids)) == 500
    got = queue.dequeue_many(1000)
    assert [m.id for m in got] == ids
    assert [m.payload for m in got] == payloads  # byte-for-byte through COPY escaping
    assert all(m.attempts == 1 and m.lease_token == got[0].lease_token for m in got)
    assert queue.dequeue_many(10) == []


def test_small_batches_use_the_insert_path_with_the_same_result(queue):
    ids = queue.batch_enqueue([{"a": 1}, [1, 2], "text", 3.5, None])
    assert [m.payload for m in queue.dequeue_many(10)] == [{"a": 1}, [1, 2], "text", 3.5, None]
    assert len(ids) == 5


def test_archive_moves_messages_out_and_counts(queue):
    queue.batch_enqueue([{"i": i} for i in range(10)])
    msgs = queue.dequeue_many(4)
    assert sorted(queue.archive_many(msgs)) == sorted(m.id for m in msgs)
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.archived, stats.dead) == (6, 0, 4, 0)
    assert stats.archived_last_minute == 4
    assert queue.archive_many(msgs) == []  # a second archive finds nothing held


def test_leased_messages_are_invisible_until_the_lease_expires(client, queue):
    [mid] = queue.batch_enqueue([{"x": 1}])
    first = queue.dequeue_many(10, lease_seconds=30)
    assert [m.id for m in first] == [mid]
    assert queue.dequeue_many(10) == []
    assert queue.stats().leased == 1
    expire_leases(client, [mid])
    again = queue.dequeue_many(10)
    assert [m.id for m in again] == [mid]
    assert again[0].attempts == 2
    assert again[0].lease_token != first[0].lease_token
    assert not first[0].after_expired_lease and again[0].after_expired_lease
    queue.fail_many(again, "handled failure", delay=0)
    assert not queue.dequeue_many(10)[0].after_expired_lease  # a settled failure is no suspect


def test_real_lease_expiry_uses_the_database_clock(queue):
    queue.enqueue({"x": 1})
    [m] = queue.dequeue_many(1, lease_seconds=0.3)
    assert queue.dequeue_many(1) == []
    time.sleep(0.5)
    [again] = queue.dequeue_many(1)
    assert again.id == m.id and again.attempts == 2


def test_stale_consumer_is_fenced_out(client, queue):
    queue.batch_enqueue([{"x": 1}, {"x": 2}])
    stale = queue.dequeue_many(2)
    expire_leases(client, [m.id for m in stale])
    fresh = queue.dequeue_many(2)
    assert queue.archive_many(stale) == []
    assert queue.fail_many(stale, "late") == pgbatch.FailOutcome()
    assert queue.extend_lease(stale, seconds=60) == []
    assert queue.release_many(stale) == []
    assert sorted(queue.archive_many(fresh)) == sorted(m.id for m in fresh)


def test_extend_lease_keeps_a_message_hidden(client, queue):
    queue.enqueue({"x": 1})
    [m] = queue.dequeue_many(1, lease_seconds=1)
    before = m.lease_expires_at
    assert queue.extend_lease([m], seconds=60) == [m.id]
    assert m.lease_expires_at > before + timedelta(seconds=30)


def test_fail_backs_off_then_dead_letters_after_max_attempts(client, queue):
    [mid] = queue.batch_enqueue([{"job": "x"}])
    for attempt in (1, 2):
        [m] = queue.dequeue_many(1)
        assert m.attempts == attempt
        outcome = queue.fail_many([m], f"boom {attempt}", delay=timedelta(seconds=60))
        assert outcome.retried == [mid]
        assert queue.dequeue_many(1) == []  # delayed by the failure
        assert queue.stats().delayed == 1
        expire_leases(client, [mid])
    [m] = queue.dequeue_many(1)
    assert m.last_error == "boom 2"
    assert queue.fail_many([m], "final").dead == [mid]
    [dead] = queue.dead_letters()
    assert (dead.id, dead.payload, dead.attempts, dead.last_error) == (
        mid,
        {"job": "x"},
        3,
        "final",
    )
    assert queue.stats().dead == 1
    assert queue.requeue_dead() == 1
    [back] = queue.dequeue_many(1)
    assert back.id == mid and back.attempts == 1
    assert queue.dead_letters() == []


def test_expired_leases_count_as_attempts_and_reach_the_dead_letters(client, queue):
    [mid] = queue.batch_enqueue([{"crash": True}])
    for _ in range(3):  # max_attempts=3: a consumer that dies every time
        [m] = queue.dequeue_many(1)
        expire_leases(client, [m.id])
    assert queue.dequeue_many(1) == []
    [dead] = queue.dead_letters()
    assert dead.id == mid and "lease expired" in (dead.last_error or "")


def test_requeue_dead_by_id(queue):
    ids = queue.batch_enqueue([{"i": i} for i in range(3)])
    msgs = queue.dequeue_many(3)
    queue.fail_many(msgs, "x", delay=0)
    for _ in range(2):
        queue.fail_many(queue.dequeue_many(3), "x", delay=0)
    assert sorted(d.id for d in queue.dead_letters()) == ids
    assert queue.requeue_dead([ids[1]]) == 1
    assert [m.id for m in queue.dequeue_many(3)] == [ids[1]]
    assert queue.purge_dead() == 2


def test_dedup_returns_the_existing_id_while_the_message_is_in_the_queue(queue):
    first = queue.enqueue({"v": 1}, dedup_key="signup-42")
    assert queue.enqueue({"v": 2}, dedup_key="signup-42") == first
    ids = queue.batch_enqueue([{"v": 3}, {"v": 4}, {"v": 5}], dedup_keys=["a", "signup-42", "a"])
    assert ids[1] == first and ids[2] == ids[0]
    msgs = queue.dequeue_many(10)
    assert sorted(m.payload["v"] for m in msgs) == [1, 3]
    queue.archive_many(msgs)
    assert queue.enqueue({"v": 6}, dedup_key="signup-42") != first  # gone from the queue


def test_delay_hides_a_message_until_due(queue):
    queue.enqueue({"later": True}, delay=timedelta(seconds=0.4))
    queue.enqueue({"now": True})
    assert [m.payload for m in queue.dequeue_many(10)] == [{"now": True}]
    assert queue.stats().delayed == 1
    time.sleep(0.5)
    assert [m.payload for m in queue.dequeue_many(10)] == [{"later": True}]


def test_priority_first_then_oldest(queue):
    queue.enqueue({"n": "low-old"})
    queue.enqueue({"n": "high"}, priority=5)
    queue.enqueue({"n": "low-new"})
    assert [m.payload["n"] for m in queue.dequeue_many(1)] == ["high"]
    assert [m.payload["n"] for m in queue.dequeue_many(2)] == ["low-old", "low-new"]


def test_paused_queue_accepts_but_hands_out_nothing(client, queue):
    client.pause_queue("jobs")
    queue.enqueue({"x": 1})
    assert queue.dequeue_many(5) == []
    client.resume_queue("jobs")
    assert len(queue.dequeue_many(5)) == 1


def test_purge_and_drop(client, queue):
    queue.batch_enqueue([{"i": i} for i in range(100)])
    assert queue.purge() == 100
    assert queue.stats().ready == 0
    client.drop_queue("jobs")
    with pytest.raises(errors.QueueNotFound):
        client.queue("jobs")


def test_create_queue_is_idempotent_and_lists(client):
    a = client.create_queue("emails", lease_seconds=12, max_attempts=7)
    b = client.create_queue("emails", lease_seconds=99)
    assert a.info == b.info and b.info.lease_seconds == 12
    assert [q.name for q in client.queues()] == ["emails"]
    assert client.queue("emails").info.max_attempts == 7


def test_enqueue_in_the_callers_transaction_commits_and_rolls_back_with_it(pg_dsn, client, queue):
    with psycopg.connect(pg_dsn) as conn:
        queue.batch_enqueue([{"tx": 1}] * 100, conn=conn)
        conn.rollback()
        assert queue.stats().ready == 0
        queue.batch_enqueue([{"tx": 2}] * 100, conn=conn)
        assert queue.stats().ready == 0  # not yet committed: invisible to others
        conn.commit()
    assert queue.stats().ready == 100


def executed_plans(
    client: pgbatch.Client, statement: bytes, params: dict[str, object], *, generic: bool = False
) -> list[dict]:
    """The executed plans of a statement and of the statements nested in it, seen through
    auto_explain on a connection of its own (``generic``: a prepared statement's generic
    plan, as the pool's connections reuse after a few runs); the statement is rolled back."""
    notices: list[str] = []
    with psycopg.connect(client.dsn) as conn:
        if conn.execute("SELECT current_setting('is_superuser')").fetchone() != ("on",):
            pytest.skip("reading nested plans with auto_explain needs a superuser")
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("LOAD 'auto_explain'")
        for name, value in {
            "auto_explain.log_min_duration": "0",
            "auto_explain.log_analyze": "on",
            "auto_explain.log_nested_statements": "on",
            "auto_explain.log_format": "json",
            "client_min_messages": "log",
            "plan_cache_mode": "force_generic_plan" if generic else "auto",
        }.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        conn.execute(statement, params, prepare=generic)  # type: ignore[arg-type]
        conn.rollback()
    return [json.loads(n[n.index("{") :]) for n in notices if "plan:" in n]


def dequeue_plans(client: pgbatch.Client, queue: pgbatch.Queue[object], limit: int) -> list[dict]:
    """The executed plans of a dequeue and of its candidates' choice (a function, migrations
    0004 and 0005); the dequeue is rolled back."""
    plans = executed_plans(
        client,
        client.queries.message_dequeue_many,
        {
            "queue_id": queue.info.id,
            "limit": limit,
            "lease_seconds": 30,
            "done_channel": client.done_channel,
        },
    )
    # The dequeue, and the function's statements inside it (one per priority range it
    # reached, migration 0005).
    chosen = [
        p["Plan"]
        for p in plans
        if "chosen AS" in p["Query Text"] or "LIMIT room" in p["Query Text"]
    ]
    assert len(chosen) >= 2, [p["Query Text"][:80] for p in plans]
    return chosen


def _nodes(node: dict) -> list[dict]:
    found = [node]
    for child in node.get("Plans", []):
        found.extend(_nodes(child))
    return found


def assert_bounded_plan(plans: list[dict], most_rows: int) -> list[dict]:
    """No step reads the whole hot table: no sort (of every visible row), no sequential scan
    of it, no hash or merge join (of such a scan, to join the given rows back), no index of
    it walked without a condition, and no scan of it (or of one of its indexes) yielding over
    ``most_rows``. Returns the plans' nodes."""
    nodes = [n for plan in plans for n in _nodes(plan)]
    kinds = {n["Node Type"] for n in nodes}
    assert not kinds & {"Sort", "Hash Join", "Merge Join"}, kinds
    on_message = [
        n
        for n in nodes
        if n.get("Relation Name") == "message"
        or str(n.get("Index Name", "")).startswith("message_")
    ]
    assert not [n for n in on_message if n["Node Type"] == "Seq Scan"]
    # An index scan without a condition walks the whole index (the plan that joined it to
    # the candidates by a filter on every row: quadratic in the backlog).
    unbounded = [
        n for n in on_message if n["Node Type"].startswith("Index") and "Index Cond" not in n
    ]
    assert not unbounded, unbounded
    many = [
        (n["Node Type"], n.get("Index Name"), n["Actual Rows"] * n["Actual Loops"])
        for n in on_message
        if n["Actual Rows"] * n["Actual Loops"] > most_rows
    ]
    assert not many, many
    return nodes


def assert_bounded_dequeue_plan(plans: list[dict], most_rows: int) -> None:
    """As assert_bounded_plan, and the candidates come from a scan of the dequeue index."""
    nodes = assert_bounded_plan(plans, most_rows)
    assert any(n.get("Index Name") == "message_dequeue_idx" for n in nodes)


# The plan tests below enqueue with priority 1: such messages are stored one per row, the
# path whose plans depend on the hot table's statistics (plain batches travel in packs,
# migration 0005).
def test_dequeue_plan_walks_the_index_with_a_leased_backlog(client, queue):
    queue.batch_enqueue([{"i": i} for i in range(20000)], priority=1)
    queue.dequeue_many(15000)
    with client.db.connection() as conn:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(client.schema, "message")))
    # The scan reads about the batch, not the 15,000 leased rows behind it.
    assert_bounded_dequeue_plan(dequeue_plans(client, queue, 100), most_rows=200)


def test_dequeue_plan_walks_the_index_without_any_statistics(client, queue):
    """A fresh hot table has no statistics: the planner guesses a few hundred visible rows and,
    left alone, would sort all 20,000 to hand out 1,000, then hash the whole table to update
    them (migration 0004 forbids the sort and tells the planner how few rows to expect)."""
    message = sql.Identifier(client.schema, "message")
    with client.db.connection() as conn:
        # No autovacuum run may analyze the table in between (servers with it on).
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(message))
    queue.batch_enqueue([{"i": i} for i in range(20000)], priority=1)
    with client.db.connection() as conn:
        analyzed = conn.execute(
            "SELECT count(*) FROM pg_stats WHERE schemaname = %s AND tablename = 'message'",
            (client.schema,),
        ).fetchone()
    assert analyzed == (0,)
    assert_bounded_dequeue_plan(dequeue_plans(client, queue, 1000), most_rows=1100)


def vacuum_while_empty(client: pgbatch.Client, queue: pgbatch.Queue[object]) -> None:
    """Drains the queue and vacuums its empty hot table, as the workers' upkeep may: the
    statistics then say the table is empty (reltuples 0) while its pages remain (truncation
    needs a lock that busy workers rarely leave free; here it is turned off)."""
    message = sql.Identifier(client.schema, "message")
    with client.db.connection() as conn:
        conn.execute(sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(message))
    queue.batch_enqueue([{"i": i} for i in range(5000)], priority=1)
    queue.archive_many(queue.dequeue_many(5000))
    with client.db.connection() as conn:
        conn.autocommit = True
        conn.execute(sql.SQL("VACUUM (TRUNCATE false) {}").format(message))
        stats = conn.execute(
            "SELECT reltuples, relpages FROM pg_class WHERE oid = %s::regclass",
            (f'"{client.schema}".message',),
        ).fetchone()
    assert stats is not None and stats[0] == 0 and stats[1] > 0


def test_dequeue_plan_stays_bounded_after_a_vacuum_of_an_empty_queue(client, queue):
    """With a burst behind such statistics the planner took the whole table as one row and
    joined it to the candidates row by row: seconds per dequeue of 1,000 from 10,000."""
    vacuum_while_empty(client, queue)
    queue.batch_enqueue([{"i": i} for i in range(20000)], priority=1)
    assert_bounded_dequeue_plan(dequeue_plans(client, queue, 1000), most_rows=1100)


def test_statements_on_held_messages_stay_bounded_after_a_vacuum_of_an_empty_queue(client, queue):
    """Archive (with results), fail, bury, extend, release and renew find the held messages
    by id: no plan of theirs reads the table, even the generic plan of a prepared statement
    (which knows neither the batch's length nor the table's). Joined to an unnest of the
    given arrays, the archive of 250 had walked the whole table once per message."""
    vacuum_while_empty(client, queue)
    queue.batch_enqueue([{"i": i} for i in range(20000)], priority=1)
    held = queue.dequeue_many(1000)
    q, target = client.queries, {"queue": "jobs", "done_channel": client.done_channel}
    fence = ops.held_params(held)
    with_text = ops.held_params(held, ["boom"] * len(held))
    statements = {
        "archive": (
            q.message_archive_many,
            {**ops.held_params(held, [orjson.Fragment(b'{"ok":1}')] * len(held)), **target},
        ),
        "fail": (q.message_fail_many, {**with_text, **target, "delay_seconds": 1.0}),
        "bury": (q.message_bury_many, {**with_text, **target}),
        "extend": (q.message_extend_lease_many, {**fence, "lease_seconds": 60.0}),
        "release": (q.message_release_many, fence),
        "renew": (q.message_renew_leases, ops.held_params(held, [60.0] * len(held))),
    }
    for name, (statement, params) in statements.items():
        plans = executed_plans(client, statement, params, generic=True)
        top = [p for p in plans if "given AS" in p["Query Text"]]
        assert len(top) == 1, name
        nodes = assert_bounded_plan([top[0]["Plan"]], most_rows=1100)
        assert top[0]["Plan"]["Actual Rows"] >= len(held), name  # every held message found
        assert any(n.get("Index Name") == "message_pkey" for n in nodes), name


def test_a_stored_payload_that_no_longer_fits_the_model_is_dead_lettered_at_once(client):
    class Signup(pydantic.BaseModel):
        email: str

    raw = client.create_queue("signups", max_attempts=5)
    good, bad = raw.batch_enqueue([{"email": "a@x.org"}, {"name": "no email"}])
    typed = client.queue("signups", model=Signup)
    [message] = typed.dequeue_many(10)
    assert message.id == good and message.payload == Signup(email="a@x.org")
    [dead] = raw.dead_letters()
    assert dead.id == bad and "does not fit Signup" in (dead.last_error or "")
    assert raw.stats().leased == 1 and raw.stats().ready == 0


def done_notes(listener: psycopg.Connection[object]) -> list[str]:
    """Every notification that arrives within a short time: no stop_after, extras count."""
    return [note.payload for note in listener.notifies(timeout=0.3)]


def test_archives_notify_the_done_channel_only_while_results_are_awaited(pg_dsn, client, queue):
    from pgbatch.db import run_plan
    from pgbatch.results import declare_interest

    once = client.create_queue("once", max_attempts=1)  # a failure is a dead letter
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(client.done_channel)))
        queue.batch_enqueue([{"i": i} for i in range(1200)])
        queue.archive_many(queue.dequeue_many(300))
        assert done_notes(listener) == []  # nobody awaits: no NOTIFY cost
        client.db.run(declare_interest(client.queries, ["jobs", "once"]), transaction=False)
        queue.archive_many(queue.dequeue_many(300))  # one lease, no results
        assert done_notes(listener) == ["jobs"]  # one per statement, not per row
        held = queue.dequeue_many(300)
        queue.archive_many(held, results=[{"i": m.payload["i"]} for m in held])
        assert done_notes(listener) == ["jobs"]
        # One batch settled as a worker settles it: its successes archived, its failures
        # dead-lettered, in a statement each.
        once.batch_enqueue([{"i": i} for i in range(600)])
        batch = once.dequeue_many(300)
        once.archive_many(batch[:200], results=[{"ok": True}] * 200)
        assert len(once.fail_many(batch[200:], "no good").dead) == 100
        assert done_notes(listener) == ["once", "once"]
        # The same in one transaction (a transactional handler): PostgreSQL delivers identical
        # notifications of one transaction once.
        batch = once.dequeue_many(300)
        target = ops.Target("once", client.done_channel)
        with client.db.connection() as conn, conn.transaction():
            run_plan(conn, ops.archive_many(client.queries, target, batch[:200]))
            run_plan(conn, ops.fail_many(client.queries, target, batch[200:], "x", delay=None))
        assert done_notes(listener) == ["once"]
        retried = queue.fail_many(queue.dequeue_many(300), "again", delay=0).retried
        assert len(retried) == 300 and done_notes(listener) == []  # none dead: no notification


def test_enqueue_wakes_listeners_once_per_statement_and_only_at_commit(pg_dsn, client, queue):
    other = client.create_queue("other")
    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(client.channel)))
        queue.batch_enqueue([{"i": i} for i in range(500)])  # the COPY path
        other.enqueue({"i": 0})  # the INSERT path
        notes = list(listener.notifies(timeout=0.5))
        assert [n.payload for n in notes] == ["jobs", "other"]  # one per statement, not per row
        with psycopg.connect(pg_dsn) as conn:
            queue.batch_enqueue([{"tx": 1}] * 100, conn=conn)
            assert list(listener.notifies(timeout=0.3)) == []  # not before the commit
            conn.rollback()
        assert list(listener.notifies(timeout=0.3)) == []  # a rolled-back enqueue wakes nobody


def test_ids_come_from_reserved_blocks_unique_across_clients(pg_dsn, schema, client, queue):
    from pgbatch.ids import ID_BLOCK

    with client.db.connection() as conn:
        [increment] = conn.execute(
            "SELECT increment_by FROM pg_sequences WHERE schemaname = %s"
            " AND sequencename = 'message_id_seq'",
            (schema,),
        ).fetchone()
    assert increment == ID_BLOCK  # the migration and pgbatch.ids agree on the block size
    with pgbatch.connect(pg_dsn, schema=schema, max_size=2) as second:
        theirs = second.queue("jobs")
        ids = []
        for size in (1, 999, 1500, 3, 70):
            ids += queue.batch_enqueue([{"n": n} for n in range(size)])
            ids += theirs.batch_enqueue([{"n": n} for n in range(size)])
    assert len(set(ids)) == len(ids) == 2 * (1 + 999 + 1500 + 3 + 70)
    assert queue.stats().ready == len(ids)


def test_archive_fences_each_message_by_its_own_lease_whatever_the_mix(client, queue):
    queue.batch_enqueue([{"i": i} for i in range(6)])
    first, second = queue.dequeue_many(3), queue.dequeue_many(3)
    expire_leases(client, [first[0].id])
    [taken_over] = queue.dequeue_many(1)  # first[0] now belongs to another delivery
    assert taken_over.id == first[0].id
    # One lease token (the fast statement) with a stale member, then two tokens mixed.
    assert sorted(queue.archive_many(first)) == sorted(m.id for m in first[1:])
    assert sorted(queue.archive_many([*second, taken_over])) == sorted(
        [taken_over.id, *(m.id for m in second)]
    )
    assert queue.stats().archived == 6 and queue.stats().leased == 0


def test_a_dequeue_that_buries_expired_leases_notifies_once_while_results_are_awaited(
    pg_dsn, client
):
    from pgbatch.results import declare_interest

    once = client.create_queue("once", max_attempts=1)

    def bury_expired(count: int) -> None:
        """Leases ``count`` messages on their last attempt, lets the leases expire and has the
        next dequeue bury them (it hands out ``count`` fresh ones too)."""
        ids = once.batch_enqueue([{"i": i} for i in range(count)])
        assert len(once.dequeue_many(count)) == count
        expire_leases(client, ids)
        once.batch_enqueue([{"i": i} for i in range(count)])
        assert len(once.dequeue_many(2 * count)) == count
        assert {d.id for d in once.dead_letters(limit=10_000)} >= set(ids)

    with psycopg.connect(pg_dsn, autocommit=True) as listener:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(client.done_channel)))
        bury_expired(200)
        assert done_notes(listener) == []  # nobody awaits: no NOTIFY cost
        client.db.run(declare_interest(client.queries, ["once"]), transaction=False)
        bury_expired(200)
        assert done_notes(listener) == ["once"]  # one per statement, not per row
        once.batch_enqueue([{"i": 0}])
        assert len(once.dequeue_many(10)) == 1  # buries nothing
        assert done_notes(listener) == []


def test_dequeue_plan_stays_bounded_while_it_buries_expired_leases(client):
    """The burial and its notification (while results are awaited) read no more of the hot
    table than the dequeue does."""
    from pgbatch.results import declare_interest

    once = client.create_queue("once", max_attempts=1)
    client.db.run(declare_interest(client.queries, ["once"]), transaction=False)
    ids = once.batch_enqueue([{"i": i} for i in range(20000)])
    once.dequeue_many(1000)
    expire_leases(client, ids[:1000])
    # Each buried message's index entries include its dead versions (leased, then its lease
    # forged expired): a few per message, far from the table's 20,000.
    assert_bounded_dequeue_plan(dequeue_plans(client, once, 1000), most_rows=4000)
