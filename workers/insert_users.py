"""The seed scenario of creating users, one message per user, handled a batch at a time.

A transactional batch handler inserts each batch of users with one statement, in the same
transaction that archives the batch (so a user is created exactly once, even across crashes
and retries). The same messages are then handled one per transaction (batch size 1), and
both times are printed with the speed-up.

    python workers/insert_users.py                     # the embedded default server
    python workers/insert_users.py --dsn postgresql://... --users 20000
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

import psycopg
from psycopg import sql

import pgbatch

SCHEMA = "pgbatch_examples"
BATCHED, ONE_BY_ONE = "create_user", "create_user_one_by_one"
USERS_TABLE = sql.Identifier(SCHEMA, "example_users")

app = pgbatch.App(schema=SCHEMA)


def insert_users(conn: psycopg.Connection[object], batch: pgbatch.Batch[dict[str, str]]) -> None:
    """One INSERT for the whole batch; a retried batch finds its users already there."""
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (email, name) SELECT * FROM unnest(%s::text[], %s::text[])"
            " ON CONFLICT (email) DO NOTHING"
        ).format(USERS_TABLE),
        ([m.payload["email"] for m in batch], [m.payload["name"] for m in batch]),
    )


@app.batch_handler(BATCHED, batch_size=500, transactional=True)
def create_users(batch: pgbatch.Batch[dict[str, str]]) -> None:
    assert isinstance(batch.conn, psycopg.Connection)
    insert_users(batch.conn, batch)


@app.batch_handler(ONE_BY_ONE, batch_size=1, transactional=True)
def create_user(batch: pgbatch.Batch[dict[str, str]]) -> None:
    assert isinstance(batch.conn, psycopg.Connection)
    insert_users(batch.conn, batch)


def prepare(client: pgbatch.Client) -> None:
    client.migrate()
    with client.db.connection() as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, email text UNIQUE"
                " NOT NULL, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
            ).format(USERS_TABLE)
        )
    for queue in (BATCHED, ONE_BY_ONE):
        client.create_queue(queue).purge()


def run(client: pgbatch.Client, queue: str, users: int) -> float:
    """Enqueues one message per user and drains them; the seconds it all took."""
    with client.db.connection() as conn:
        conn.execute(sql.SQL("TRUNCATE {}").format(USERS_TABLE))
    payloads = [{"email": f"user{i}@example.com", "name": f"User {i}"} for i in range(users)]
    started = time.perf_counter()
    client.queue(queue).batch_enqueue(payloads)
    report = app.run_worker([queue], concurrency=4, until_empty=True)
    elapsed = time.perf_counter() - started
    with client.db.connection() as conn:
        row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(USERS_TABLE)).fetchone()
    assert row is not None and row[0] == users == report.archived, (row, report)
    return elapsed


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default=None, help="default: $PGBATCH_DSN, $DATABASE_URL, embedded"
    )
    parser.add_argument("--users", type=int, default=5_000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    app.dsn = args.dsn
    with pgbatch.connect(args.dsn, schema=SCHEMA) as client:
        app.dsn = client.dsn  # resolved once (the embedded server, if it comes to that)
        prepare(client)
        batched = run(client, BATCHED, args.users)
        print(
            f"{args.users:,} users, batches of 500:    {batched:6.2f} s"
            f"  ({args.users / batched:,.0f} users/s)"
        )
        single = run(client, ONE_BY_ONE, args.users)
        print(
            f"{args.users:,} users, one per transaction: {single:6.2f} s"
            f"  ({args.users / single:,.0f} users/s)"
        )
        print(f"speed-up: {single / batched:.1f}x")


if __name__ == "__main__":
    main()
