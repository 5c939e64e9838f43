"""One fault scenario: a queue in the test's schema, worker processes, and the final ledger."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgbatch
from tests.faults.conservation import Ledger, create_effect_table, read_ledger, remaining
from tests.faults.processes import WorkerProcess, kill_all, wait_until

QUEUE = "faults"


class Scenario:
    def __init__(self, dsn: str, schema: str, logs: Path, **queue_settings: Any) -> None:
        self.dsn, self.schema, self.logs = dsn, schema, logs
        # Unique per scenario: tests terminate backends by application name on a shared server.
        self.application_name = f"pgbatch-fault-{secrets.token_hex(4)}"
        self.workers: list[WorkerProcess] = []
        self.enqueued: list[int] = []
        create_effect_table(dsn, schema)
        self.client = pgbatch.connect(dsn, schema=schema, max_size=2)
        settings = {"lease_seconds": 2.0, "max_attempts": 20, "backoff_base": 0.05}
        self.queue = self.client.create_queue(QUEUE, **{**settings, **queue_settings})

    def config(self, **overrides: Any) -> dict[str, Any]:
        return {
            "dsn": self.dsn,
            "schema": self.schema,
            "queue": QUEUE,
            "application_name": self.application_name,
            **overrides,
        }

    def worker(
        self, *, start: bool = True, supervise: int | None = None, **overrides: Any
    ) -> WorkerProcess:
        """A worker process (with ``supervise=N``: the supervisor of N worker processes)."""
        worker = WorkerProcess(
            self.config(**overrides),
            self.logs / f"worker{len(self.workers)}.log",
            arguments=[] if supervise is None else ["supervise", str(supervise)],
        )
        self.workers.append(worker)
        return worker.start() if start else worker

    def enqueue(self, count: int, **payload: Any) -> list[int]:
        ids: list[int] = []
        for start in range(0, count, 1000):
            chunk = range(start, min(count, start + 1000))
            ids += self.queue.batch_enqueue([{"n": n, **payload} for n in chunk])
        self.enqueued += ids
        return ids

    def remaining(self) -> int:
        return remaining(self.dsn, self.schema)

    def wait_drained(self, timeout: float) -> None:
        wait_until(
            lambda: self.remaining() == 0,
            timeout=timeout,
            interval=0.2,
            what="every message to leave the queue",
        )

    def effect_count(self) -> int:
        """Handler runs so far (reads only the effect table)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(self.schema, "effect"))
            ).fetchone()
        return int(row[0]) if row else 0

    def ledger(self, *, effects: bool = True) -> Ledger:
        return read_ledger(self.dsn, self.schema, QUEUE, self.enqueued, effects=effects)

    def backends(self, suffix: str = "") -> list[int]:
        """Server pids of this scenario's worker connections (``-listener``: the listener)."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                (self.application_name + suffix,),
            ).fetchall()
        return [int(row[0]) for row in rows]

    def terminate(self, suffix: str = "") -> int:
        """pg_terminate_backend on this scenario's worker connections; how many."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (self.application_name + suffix,),
            ).fetchone()
        return int(row[0]) if row else 0

    def execute(self, statement: sql.Composed, *params: Any) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(statement, params)

    def logs_text(self) -> str:
        return "\n".join(worker.log() for worker in self.workers)

    def close(self) -> None:
        kill_all(self.workers)
        self.client.close()


@pytest.fixture
def scenario_factory(pg_dsn: str, schema: str, tmp_path: Path) -> Iterator[Any]:
    """Builds the test's Scenario (queue settings as keywords); kills its workers afterwards."""
    made: list[Scenario] = []

    def make(**queue_settings: Any) -> Scenario:
        made.append(Scenario(pg_dsn, schema, tmp_path, **queue_settings))
        return made[-1]

    yield make
    for scenario in made:
        scenario.close()
