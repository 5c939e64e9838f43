"""Promise 6 of docs/guarantees.md, watched from outside: while a handler runs, no transaction
of the worker stays open, except the one a transactional handler runs in, by design.

A real ``pgbatch worker`` process runs a handler that blocks until the test opens a gate (a
file), and the test reads the worker's backends in pg_stat_activity meanwhile. The module-level
``app`` below is what the worker loads (``tests.test_handler_transactions:app``); each test
points it at its own schema and gate through the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgbatch
from tests.faults.processes import wait_until

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
APP_PATH = "tests.test_handler_transactions:app"
SCHEMA_ENV = "PGBATCH_TEST_HANDLER_TX_SCHEMA"
GATE_ENV = "PGBATCH_TEST_HANDLER_TX_GATE"
MESSAGES = 10
# Short, so that the worker renews the lease (about every second) while the handler blocks.
LEASE_SECONDS = 3.0
# A statement of the worker's runs for milliseconds; "active" this long means a transaction
# (or a statement) that spans the handler.
LONGEST_STATEMENT = timedelta(seconds=2)

_schema = os.environ.get(SCHEMA_ENV, "pgbatch")
app = pgbatch.App(schema=_schema, application_name=f"pgbatch-tx-{_schema}")


def wait_at_gate(batch: pgbatch.Batch[Any]) -> None:
    """Says it holds its batch (file ``entered``), then blocks until the file ``open`` exists."""
    gate = Path(os.environ[GATE_ENV])
    # Written aside, then renamed: the test reads it as soon as it exists (a plain write
    # let it read an empty file once, in CI on 2026-11-30).
    (gate / "entered.part").write_text(",".join(str(m.id) for m in batch))
    (gate / "entered.part").rename(gate / "entered")
    deadline = time.monotonic() + 60
    while not (gate / "open").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("the test never opened the gate")
        time.sleep(0.02)


@app.batch_handler("plain", batch_size=MESSAGES, lease_seconds=LEASE_SECONDS)
def plain(batch: pgbatch.Batch[Any]) -> None:
    wait_at_gate(batch)


@app.batch_handler(
    "transactional", batch_size=MESSAGES, lease_seconds=LEASE_SECONDS, transactional=True
)
def transactional(batch: pgbatch.Batch[Any]) -> None:
    wait_at_gate(batch)


# --- helpers ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    """One of the worker's server connections, as pg_stat_activity shows it."""

    pid: int
    application_name: str
    state: str | None  # "starting" (PostgreSQL 16+) or None (before) while it starts up
    transaction_age: timedelta | None  # None: not in a transaction
    holds_xmin: bool

    @property
    def holds_a_transaction(self) -> bool:
        """In a transaction between statements, pinning a snapshot, or in one that lasts."""
        if self.state in (None, "starting"):
            # A connection being opened: its start-up reads the catalogs in a transaction of
            # its own, under a snapshot, before the client has sent anything. Seen in CI.
            return False
        if self.state != "active":
            return self.transaction_age is not None or self.holds_xmin
        return self.transaction_age is not None and self.transaction_age > LONGEST_STATEMENT


def worker_backends(db: psycopg.Connection[Any], application_name: str) -> list[Backend]:
    # Autocommit: each call reads pg_stat_activity afresh (it is a snapshot per transaction).
    rows = db.execute(
        "SELECT pid, application_name, state, now() - xact_start, backend_xmin IS NOT NULL"
        " FROM pg_stat_activity WHERE application_name IN (%s, %s || '-listener')"
        " ORDER BY pid",
        (application_name, application_name),
    ).fetchall()
    return [Backend(*row) for row in rows]


def watch(
    db: psycopg.Connection[Any], application_name: str, seconds: float
) -> list[list[Backend]]:
    """Samples the worker's backends every 50 ms for ``seconds``."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(worker_backends(db, application_name))
        time.sleep(0.05)
    return samples


def count(db: psycopg.Connection[Any], schema: str, query: str) -> int:
    row = db.execute(sql.SQL(query).format(s=sql.Identifier(schema))).fetchone()
    return int(row[0]) if row else 0


@dataclass
class BlockedWorker:
    """A ``pgbatch worker`` process whose handler holds a batch at the gate."""

    process: subprocess.Popen[bytes]
    gate: Path
    log: Path
    application_name: str
    ids: list[int]

    def held_ids(self) -> list[int]:
        return [int(i) for i in (self.gate / "entered").read_text().split(",")]

    def release(self) -> None:
        (self.gate / "open").touch()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)


@pytest.fixture
def db(pg_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def blocked_worker(
    pg_dsn: str, schema: str, tmp_path: Path
) -> Iterator[Callable[[str], BlockedWorker]]:
    """Starts a worker on one queue, enqueues one batch, returns once the handler holds it."""
    started: list[subprocess.Popen[bytes]] = []

    def start(queue: str) -> BlockedWorker:
        gate = tmp_path / "gate"
        gate.mkdir()
        log = tmp_path / "worker.log"
        with pgbatch.connect(pg_dsn, schema=schema, max_size=1) as client:
            ids = client.create_queue(queue, lease_seconds=LEASE_SECONDS).batch_enqueue(
                [{"n": n} for n in range(MESSAGES)]
            )
        env = {**os.environ, SCHEMA_ENV: schema, GATE_ENV: str(gate)}
        options = ["--dsn", pg_dsn, "--queue", queue, "--concurrency", "1"]
        with log.open("ab") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "pgbatch.cli", "worker", APP_PATH, *options],
                cwd=ROOT,
                env=env,
                stdout=stderr,
                stderr=stderr,
            )
        started.append(process)
        wait_until(
            lambda: (gate / "entered").exists() or process.poll() is not None,
            timeout=30,
            what="the handler to take its batch",
        )
        assert process.poll() is None, log.read_text()[-3000:]
        return BlockedWorker(process, gate, log, f"pgbatch-tx-{schema}", ids)

    yield start
    for process in started:  # a failed test must not leave a worker behind
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def release_and_check_archived(
    worker: BlockedWorker, db: psycopg.Connection[Any], schema: str
) -> None:
    worker.release()
    wait_until(
        lambda: count(db, schema, "SELECT count(*) FROM {s}.archive") == MESSAGES,
        timeout=30,
        what="the released batch to be archived",
    )
    assert count(db, schema, "SELECT count(*) FROM {s}.message") == 0
    assert worker.stop() == 0, worker.log.read_text()[-3000:]


# --- the tests ----------------------------------------------------------------------------------


def test_no_transaction_stays_open_while_a_handler_runs(blocked_worker, db, schema):
    worker = blocked_worker("plain")
    assert sorted(worker.held_ids()) == worker.ids
    renewal_before = count(
        db, schema, "SELECT max(extract(epoch FROM visible_at) * 1000) FROM {s}.message"
    )

    samples = watch(db, worker.application_name, seconds=2 * LEASE_SECONDS / 3 + 1.5)

    # The worker was there and busy: its listener and pool connections were seen, and it
    # renewed the lease (in statements of its own) while the handler blocked.
    names = {backend.application_name for sample in samples for backend in sample}
    assert names == {worker.application_name, worker.application_name + "-listener"}
    renewal_after = count(
        db, schema, "SELECT max(extract(epoch FROM visible_at) * 1000) FROM {s}.message"
    )
    assert renewal_after > renewal_before, "no lease renewal while the handler blocked"
    holding = [b for sample in samples for b in sample if b.holds_a_transaction]
    assert holding == [], f"transactions open while the handler ran: {holding}"

    release_and_check_archived(worker, db, schema)


def test_a_transactional_handler_runs_in_exactly_one_open_transaction(blocked_worker, db, schema):
    """The contrast: the same watch sees the transaction a transactional handler runs in."""
    worker = blocked_worker("transactional")
    assert sorted(worker.held_ids()) == worker.ids

    samples = watch(db, worker.application_name, seconds=1.0)

    for sample in samples:
        holding = [b for b in sample if b.holds_a_transaction]
        assert len(holding) == 1, f"expected the handler's one transaction: {sample}"
        assert holding[0].state == "idle in transaction"
    # The same transaction all along: it is as old as the handler's run.
    assert len({b.pid for sample in samples for b in sample if b.holds_a_transaction}) == 1

    release_and_check_archived(worker, db, schema)
