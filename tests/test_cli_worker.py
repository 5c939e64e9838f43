"""``pgbatch worker`` and ``pgbatch demo`` as real processes against a real PostgreSQL:
start, drain, SIGTERM; the demo's comparison."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

PGBATCH = [sys.executable, "-m", "pgbatch.cli"]

TASKS = """
import os

import pgbatch

app = pgbatch.App(schema=os.environ["PGBATCH_TEST_SCHEMA"])


@app.batch_handler("jobs", batch_size=50)
def handle(batch):
    for msg in batch:
        if msg.payload.get("fail"):
            batch.fail(msg, "told to fail", delay=3600)
"""


@pytest.fixture
def tasks_module(tmp_path: Path) -> str:
    """A user's module with an App, importable from tmp_path (the worker's working dir)."""
    name = f"tasks_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(TASKS)
    return name


@pytest.fixture
def run_env(schema: str) -> dict[str, str]:
    return {**os.environ, "PGBATCH_TEST_SCHEMA": schema}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


@pytest.fixture
def worker_process(
    tmp_path: Path, tasks_module: str, pg_dsn: str, run_env: dict[str, str]
) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(
            [*PGBATCH, "worker", f"{tasks_module}:app", "--dsn", pg_dsn, *args],
            cwd=tmp_path,
            env=run_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        return process

    yield start
    for process in started:  # a failed test must not leave workers behind
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=30)  # reaps it and closes its pipes


def test_worker_drains_the_queue_and_exits(worker_process, client, queue):
    queue.batch_enqueue([{"n": i} for i in range(2000)] + [{"fail": True}])
    process = worker_process("--until-empty", "--processes", "2", "--batch-size", "100")
    _out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err.decode()
    stats = queue.stats()
    assert (stats.archived, stats.ready, stats.delayed) == (2000, 0, 1)


def test_worker_runs_until_sigterm_then_exits_0(worker_process, pg_dsn, schema, queue):
    process = worker_process("--concurrency", "2")

    def workers() -> list[dict[str, object]]:
        done = subprocess.run(
            [*PGBATCH, "workers", "--json", "--dsn", pg_dsn, "--schema", schema],
            capture_output=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr.decode()
        return list(orjson.loads(done.stdout))

    wait_for(lambda: any(w["state"] == "live" for w in workers()), 60, "a live worker")
    queue.batch_enqueue([{"n": i} for i in range(500)])
    wait_for(lambda: queue.stats().archived == 500, 60, "the worker to archive 500 messages")
    process.send_signal(signal.SIGTERM)
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err.decode()
    [row] = workers()
    assert row["state"] == "stopped" and row["messages_done"] == 500
    assert queue.stats().leased == 0  # nothing waits out a lease


def test_worker_with_an_unknown_module_is_a_clear_error(tmp_path, pg_dsn, run_env):
    done = subprocess.run(
        [*PGBATCH, "worker", "no_such_module_here:app", "--dsn", pg_dsn],
        cwd=tmp_path,
        env=run_env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert b"no_such_module_here" in done.stderr and b"Traceback" not in done.stderr


def test_demo_compares_batches_with_one_message_per_transaction(pg_dsn, schema, client):
    done = subprocess.run(
        [
            *PGBATCH,
            "demo",
            "--messages",
            "5000",
            "--single-limit",
            "300",
            "--single-seconds",
            "5",
            "--json",
            "--dsn",
            pg_dsn,
            "--schema",
            schema,
        ],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    result = orjson.loads(done.stdout)
    batched, single = result["batched"], result["one_per_transaction"]
    assert batched["enqueue"]["measured"] == batched["process"]["measured"] == 5000
    assert 0 < single["enqueue"]["measured"] <= 300
    assert 0 < single["process"]["measured"] <= single["enqueue"]["measured"]
    assert result["speedup"]["enqueue"] > 1 and result["speedup"]["process"] > 1
    print(
        f"\ndemo speed-up: enqueue {result['speedup']['enqueue']:.0f}x, "
        f"dequeue+archive {result['speedup']['process']:.0f}x"
    )
    assert "pgbatch-demo" not in {q.name for q in client.queues()}  # cleaned up


def test_demo_table_for_people(pg_dsn, schema):
    done = subprocess.run(
        [
            *PGBATCH,
            "demo",
            "--messages",
            "500",
            "--single-limit",
            "50",
            "--dsn",
            pg_dsn,
            "--schema",
            schema,
        ],
        capture_output=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr.decode()
    text = done.stdout.decode()
    for expected in (
        "enqueue",
        "dequeue + archive",
        "end to end",
        "speed-up",
        "measured on 50 enqueues",
    ):
        assert expected in text
