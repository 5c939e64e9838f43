"""Producer and consumer processes for the soak: real processes on the core API.

    python -m tests.faults.churn produce DSN SCHEMA QUEUE TOTAL DONE_FILE [STOP_FILE]
    python -m tests.faults.churn consume DSN SCHEMA QUEUE BATCH DONE_FILE OUT_FILE

The producer enqueues TOTAL messages with batch_enqueue (1,000 a batch), keeping the backlog
under BACKLOG_HIGH so that the hot table churns in a steady state rather than filling up, and
creates DONE_FILE at the end (or earlier, once STOP_FILE exists). A consumer leases BATCH
messages and archives them until the queue is empty and DONE_FILE exists (doing the hot
table's upkeep every few seconds, as worker processes do), then writes one
line per batch to OUT_FILE: ``<monotonic seconds> <messages archived>`` (CLOCK_MONOTONIC is
shared by the processes).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from psycopg import sql

import pgbatch
from pgbatch.worker.upkeep import CHECK_SECONDS, vacuum_if_bloated
from tests.stored import stored_messages

ENQUEUE_BATCH = 1000
BACKLOG_HIGH = 20_000
BACKLOG_CHECK_EVERY = 10  # batches


def backlog(client: pgbatch.Client) -> int:
    """Messages still in the queue; queue.stats() would also count the whole archive."""
    with client.db.connection() as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} AS m").format(stored_messages(client.schema))
        ).fetchone()
    return int(row[0]) if row else 0


def produce(
    dsn: str, schema: str, queue_name: str, total: int, done_file: Path, stop_file: Path | None
) -> None:
    with pgbatch.connect(dsn, schema=schema, max_size=1) as client:
        queue = client.queue(queue_name)
        sent = 0
        batches = 0
        while sent < total:
            if batches % BACKLOG_CHECK_EVERY == 0:
                if stop_file is not None and stop_file.exists():
                    break
                while backlog(client) > BACKLOG_HIGH:
                    time.sleep(0.05)
            count = min(ENQUEUE_BATCH, total - sent)
            queue.batch_enqueue([{"n": sent + i, "pad": "x" * 40} for i in range(count)])
            sent += count
            batches += 1
    done_file.touch()


def consume(
    dsn: str, schema: str, queue_name: str, batch: int, done_file: Path, out_file: Path
) -> None:
    progress: list[tuple[float, int]] = []
    upkeep_due = time.monotonic()
    with pgbatch.connect(dsn, schema=schema, max_size=1) as client:
        queue = client.queue(queue_name)
        while True:
            if time.monotonic() >= upkeep_due:
                # What every worker process does on the side (pgbatch.worker.upkeep).
                client.db.run(vacuum_if_bloated(client.queries), transaction=False)
                upkeep_due = time.monotonic() + CHECK_SECONDS
            messages = queue.dequeue_many(batch, lease_seconds=60)
            if messages:
                archived = queue.archive_many(messages)
                progress.append((time.monotonic(), len(archived)))
                continue
            if done_file.exists() and backlog(client) == 0:
                break
            time.sleep(0.01)
    out_file.write_text("".join(f"{t:.6f} {n}\n" for t, n in progress))


def main(argv: list[str]) -> None:
    command, dsn, schema, queue_name, *rest = argv
    if command == "produce":
        stop_file = Path(rest[2]) if len(rest) > 2 else None
        produce(dsn, schema, queue_name, int(rest[0]), Path(rest[1]), stop_file)
    elif command == "consume":
        consume(dsn, schema, queue_name, int(rest[0]), Path(rest[1]), Path(rest[2]))
    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
