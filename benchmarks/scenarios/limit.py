"""PostgreSQL's own limit: the queue's SQL work done by pgbench alone, with no Python.

Each run gets a fresh pgbatch schema, so the tables, indexes and settings are pgbatch's own
(migration 0001), and a fixed amount of work (``-t``), so rows/s = rows / pgbench's time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from benchmarks import database as db
from benchmarks.harness import Case, Comparison, Context, ScenarioResult
from benchmarks.pgbench import PgbenchError, find_pgbench, run_script
from benchmarks.scenarios import Skip, scenario

INSERT_SCRIPT = "limit_insert.sql"
LEASE_SCRIPT = "limit_lease_archive.sql"
BATCH_LEASE_SCRIPT = "limit_batch_lease.sql"
ORDERED_LEASE_SCRIPT = "limit_ordered_lease.sql"
ORDERED_ARCHIVE_SCRIPT = "limit_ordered_archive.sql"
PACK_LEASE_SCRIPT = "limit_pack_lease.sql"
PACK_ARCHIVE_SCRIPT = "limit_pack_lease_archived.sql"
ORDERED_FILL_TRANSACTIONS = 100
BATCH_LEASES = "batch leases"  # limit (d)
ORDERED = "claims ordered by commit"  # limit (e)
ORDERED_ARCHIVED = "ordered claims, archive row per message"  # limit (f)
PACKS = "packs of 100 messages, leased and archived as rows"  # limit (g)
PACKS_ARCHIVED = "packs, archive row per message"  # limit (h)
LEASE_BATCH = 100


def insert_rate(dsn: str, *, rows_per_transaction: int, transactions: int) -> float:
    """Rows/s of ``transactions`` INSERTs of ``rows_per_transaction`` rows, one client."""
    with db.fresh_schema(dsn, "limit") as schema:
        queue_id = db.create_bench_queue(dsn, schema)
        run = run_script(
            dsn,
            schema,
            INSERT_SCRIPT,
            clients=1,
            scripts_per_client=transactions,
            variables={"queue_id": queue_id, "rows": rows_per_transaction},
        )
        written = db.count(dsn, schema, "message")
    if written != rows_per_transaction * transactions:
        raise PgbenchError(f"limit insert wrote {written} rows")
    return run.scripts_per_second * rows_per_transaction


@dataclass(frozen=True, slots=True)
class ConsumerWork:
    """A fixed amount of consumer work: whole batches per client, and a spare batch per client
    in the backlog so that a lease never comes back empty (pgbench's \\gset needs a row)."""

    batch: int
    clients: int
    messages: int

    @property
    def per_client(self) -> int:
        return max(1, self.messages // (self.batch * self.clients))

    @property
    def moved(self) -> int:
        return self.per_client * self.batch * self.clients

    @property
    def backlog(self) -> int:
        return self.moved + self.batch * self.clients

    def run(self, dsn: str, schema: str, script: str, queue_id: int) -> float:
        """Runs the script for this work; messages/s."""
        done = run_script(
            dsn,
            schema,
            script,
            clients=self.clients,
            scripts_per_client=self.per_client,
            variables={"queue_id": queue_id, "batch": self.batch},
        )
        return done.scripts_per_second * self.batch


def lease_archive_rate(dsn: str, *, batch: int, clients: int, messages: int) -> float:
    """Messages/s moved from a ready backlog to the archive by the naive two-step loop."""
    work = ConsumerWork(batch, clients, messages)
    with db.fresh_schema(dsn, "limit") as schema:
        queue_id = db.create_bench_queue(dsn, schema)
        db.fill_backlog(dsn, schema, queue_id, work.backlog)
        rate = work.run(dsn, schema, LEASE_SCRIPT, queue_id)
        archived = db.count(dsn, schema, "archive")
    if archived != work.moved:
        raise PgbenchError(f"limit lease-then-archive archived {archived} of {work.moved}")
    return rate


def batch_lease_rate(dsn: str, *, batch: int, clients: int, messages: int) -> float:
    """Limit (d): messages/s through the alternative layout, where a consumer claims and
    completes a whole id range with one row each (no write per message after the insert)."""
    work = ConsumerWork(batch, clients, messages)
    with db.fresh_schema(dsn, "layout") as schema, db.connect(dsn) as conn:
        queue_id = db.create_bench_queue(dsn, schema)
        conn.execute(db.helper("batch_layout_create", schema))
        params = {"queue_id": queue_id, "count": work.backlog}
        conn.execute(db.helper("batch_layout_fill", schema), params)
        return _drain_layout(conn, dsn, schema, work, "batch_layout", BATCH_LEASE_SCRIPT, params)


def ordered_lease_rate(
    dsn: str, *, batch: int, clients: int, messages: int, script: str = ORDERED_LEASE_SCRIPT
) -> float:
    """Limit (e): limit (d) with claims ordered by commit (the inserting transaction's id,
    claimed only below the snapshot's xmin), from a backlog written by many transactions.
    With ORDERED_ARCHIVE_SCRIPT, limit (f): also an archive row per message."""
    work = ConsumerWork(batch, clients, messages)
    with db.fresh_schema(dsn, "ordered") as schema, db.connect(dsn) as conn:
        queue_id = fill_ordered_layout(conn, dsn, schema, work.backlog)
        params = {"queue_id": queue_id}
        rate = _drain_layout(conn, dsn, schema, work, "ordered_layout", script, params)
        if script == ORDERED_ARCHIVE_SCRIPT:
            archived = db.count(dsn, schema, "archive")
            if archived != work.moved:
                raise PgbenchError(f"limit (f) archived {archived} of {work.moved}")
        return rate


def pack_lease_rate(
    dsn: str, *, batch: int, clients: int, messages: int, script: str = PACK_LEASE_SCRIPT
) -> float:
    """Limit (g): limit (b)'s loop on packs of ``batch`` messages (a row per pack). With
    PACK_ARCHIVE_SCRIPT, limit (h): the archive keeps a row per message."""
    work = ConsumerWork(batch, clients, messages)
    with db.fresh_schema(dsn, "packs") as schema, db.connect(dsn) as conn:
        queue_id = fill_pack_layout(conn, dsn, schema, work.backlog, batch)
        params = {"queue_id": queue_id}
        if script == PACK_LEASE_SCRIPT:
            return _drain_layout(
                conn, dsn, schema, work, "pack_layout", script, params, cursor=False
            )
        conn.execute(db.helper("pack_layout_vacuum", schema))
        rate = work.run(dsn, schema, script, queue_id)
        archived = db.count(dsn, schema, "archive")
    if archived != work.moved:
        raise PgbenchError(f"limit (h) archived {archived} of {work.moved}")
    return rate


def pack_archive_rate(dsn: str, *, batch: int, clients: int, messages: int) -> float:
    """Limit (h): limit (g) with an archive row per message."""
    return pack_lease_rate(
        dsn, batch=batch, clients=clients, messages=messages, script=PACK_ARCHIVE_SCRIPT
    )


def fill_pack_layout(
    conn: psycopg.Connection[Any], dsn: str, schema: str, messages: int, pack: int
) -> int:
    """Creates layout (g)'s tables in ``schema`` and writes ``messages`` into them in packs of
    ``pack``; the benchmark queue's id."""
    queue_id = db.create_bench_queue(dsn, schema)
    conn.execute(db.helper("pack_layout_create", schema))
    params = {"queue_id": queue_id, "count": messages, "pack": pack}
    conn.execute(db.helper("pack_layout_fill", schema), params)
    return queue_id


def fill_ordered_layout(conn: psycopg.Connection[Any], dsn: str, schema: str, messages: int) -> int:
    """Creates layout (e)'s tables in ``schema`` and writes ``messages`` into them with
    ORDERED_FILL_TRANSACTIONS transactions (so that claims cross transaction boundaries); the
    benchmark queue's id."""
    queue_id = db.create_bench_queue(dsn, schema)
    conn.execute(db.helper("ordered_layout_create", schema))
    per_transaction = -(-messages // ORDERED_FILL_TRANSACTIONS)
    for low in range(1, messages + 1, per_transaction):
        high = min(low + per_transaction - 1, messages)
        with conn.transaction():
            conn.execute(
                db.helper("ordered_layout_fill", schema),
                {"queue_id": queue_id, "low": low, "high": high},
            )
    return queue_id


def ordered_archive_rate(dsn: str, *, batch: int, clients: int, messages: int) -> float:
    """Limit (f): limit (e) plus an archive row per message, copied at completion."""
    return ordered_lease_rate(
        dsn, batch=batch, clients=clients, messages=messages, script=ORDERED_ARCHIVE_SCRIPT
    )


def _drain_layout(
    conn: psycopg.Connection[Any],
    dsn: str,
    schema: str,
    work: ConsumerWork,
    layout: str,
    script: str,
    params: dict[str, int],
    *,
    cursor: bool = True,
) -> float:
    """Starts the queue's cursor on a filled layout (if it has one), runs ``script``, checks
    the work done."""
    if cursor:
        conn.execute(db.helper(f"{layout}_cursor_create", schema), params)
    conn.execute(db.helper(f"{layout}_vacuum", schema))
    rate = work.run(dsn, schema, script, params["queue_id"])
    done = int(db.scalar(dsn, db.helper(f"{layout}_done_count", schema)))
    if done != work.moved:
        raise PgbenchError(f"limit {layout} completed {done} of {work.moved}")
    return rate


def layout_case(
    ctx: Context, key: str, clients: int, layout: str, rate: Callable[..., float]
) -> Case:
    """A case of an alternative layout: ``rate`` with batches of LEASE_BATCH."""
    return Case(
        key,
        f"alternative layout, {layout}: lease {LEASE_BATCH} then complete,"
        f" {clients} client{'s' * (clients > 1)}",
        "msg/s",
        functools.partial(
            rate, ctx.dsn, batch=LEASE_BATCH, clients=clients, messages=ctx.sizes.messages
        ),
    )


def require_pgbench() -> None:
    if find_pgbench() is None:
        raise Skip("pgbench not found: set PGBENCH or install the PostgreSQL client tools")


def insert_case(ctx: Context, key: str) -> Case:
    """Limit (a): the enqueue scenario's messages, INSERTed a batch per transaction."""
    batch = ctx.sizes.enqueue_batch
    return Case(
        key,
        f"PostgreSQL alone: INSERT {batch:,} rows/txn, 1 client",
        "rows/s",
        functools.partial(
            insert_rate,
            ctx.dsn,
            rows_per_transaction=batch,
            transactions=max(1, ctx.sizes.messages // batch),
        ),
    )


def lease_case(ctx: Context, key: str, clients: int, batch: int = LEASE_BATCH) -> Case:
    """Limit (b), or (c) with batch 1: the naive lease-then-archive loop."""
    messages = ctx.sizes.messages if batch > 1 else ctx.sizes.one_row_transactions
    return Case(
        key,
        f"PostgreSQL alone: lease {batch} then archive, {clients} client{'s' * (clients > 1)}",
        "msg/s",
        functools.partial(
            lease_archive_rate, ctx.dsn, batch=batch, clients=clients, messages=messages
        ),
    )


@scenario("limit", "Limit: the queue's SQL work done by pgbench alone")
def limit(ctx: Context, result: ScenarioResult) -> None:
    require_pgbench()
    one_row = ctx.sizes.one_row_transactions
    ctx.rounds(
        result,
        [
            insert_case(ctx, "limit.insert_batch"),
            lease_case(ctx, "limit.lease_archive_100.c1", 1),
            lease_case(ctx, "limit.lease_archive_100.c2", 2),
            Case(
                "limit.insert_1",
                "PostgreSQL alone: INSERT 1 row/txn, 1 client",
                "rows/s",
                functools.partial(
                    insert_rate, ctx.dsn, rows_per_transaction=1, transactions=one_row
                ),
            ),
            lease_case(ctx, "limit.lease_archive_1.c1", 1, batch=1),
            *(
                layout_case(ctx, f"limit.batch_lease_100.c{n}", n, BATCH_LEASES, batch_lease_rate)
                for n in (1, 2)
            ),
            *(
                layout_case(ctx, f"limit.ordered_lease_100.c{n}", n, ORDERED, ordered_lease_rate)
                for n in (1, 2)
            ),
            *(
                layout_case(
                    ctx,
                    f"limit.ordered_archive_100.c{n}",
                    n,
                    ORDERED_ARCHIVED,
                    ordered_archive_rate,
                )
                for n in (1, 2)
            ),
            *(
                layout_case(ctx, f"limit.pack_lease_100.c{n}", n, PACKS, pack_lease_rate)
                for n in (1, 2)
            ),
            *(
                layout_case(
                    ctx, f"limit.pack_archive_100.c{n}", n, PACKS_ARCHIVED, pack_archive_rate
                )
                for n in (1, 2)
            ),
        ],
    )
    result.comparisons += [
        Comparison(
            "what batching buys: insert 1,000/txn vs 1/txn", "limit.insert_batch", "limit.insert_1"
        ),
        Comparison(
            "what batching buys: lease-archive 100 vs 1",
            "limit.lease_archive_100.c1",
            "limit.lease_archive_1.c1",
        ),
        Comparison(
            "alternative layout (d) vs the naive loop (b), 2 clients",
            "limit.batch_lease_100.c2",
            "limit.lease_archive_100.c2",
        ),
        Comparison(
            "alternative layout, commit-ordered (e) vs the naive loop (b), 2 clients",
            "limit.ordered_lease_100.c2",
            "limit.lease_archive_100.c2",
        ),
        Comparison(
            "alternative layout, commit-ordered with archive rows (f) vs the naive loop (b),"
            " 2 clients",
            "limit.ordered_archive_100.c2",
            "limit.lease_archive_100.c2",
        ),
        Comparison(
            "alternative layout, packs (g) vs the naive loop (b), 2 clients",
            "limit.pack_lease_100.c2",
            "limit.lease_archive_100.c2",
        ),
        Comparison(
            "alternative layout, packs with archive rows (h) vs the naive loop (b), 2 clients",
            "limit.pack_archive_100.c2",
            "limit.lease_archive_100.c2",
        ),
    ]
    result.notes.append(
        "(a) ids from the queue's sequence, payloads cast from JSON text to jsonb as COPY does;"
        " (b) two transactions per batch (lease: UPDATE ... FROM (SELECT ... FOR UPDATE SKIP"
        " LOCKED) returning the payloads; archive: DELETE ... RETURNING into INSERT archive),"
        " from a ready backlog vacuumed before each run; (c) the same one row per transaction;"
        " (d) an alternative layout, PgQ-style batch leases (a per-queue claim cursor, one"
        " lease row per batch, completion by one update of it; messages never updated or"
        " moved), from the same backlog: the write pattern a redesign would have; (e) the"
        " same with claims ordered by commit (the inserting transaction's xid8, claimed only"
        " below the snapshot's xmin, consumers taking turns on the cursor row), from a backlog"
        f" written by {ORDERED_FILL_TRANSACTIONS} transactions; (f) (e) plus an archive row"
        " per message, copied by primary-key range when the batch completes; (g) packs: the"
        " messages stored 100 to a row (one JSON array of payloads), and (b)'s loop run on"
        " those rows, a pack leased and archived whole; (h) (g) with the archive unpacked into a"
        " row per message, as today's archive keeps them."
        " pgbench -M prepared. The enqueue and drain scenarios rerun the limit they compare"
        " with in their own rounds."
    )
