"""Worker processes, for real: SIGKILL, SIGTERM, a second signal, the supervisor restarting a
killed child, draining with two processes, metrics, and giving up on a bad configuration.

The module-level ``app`` below is what the child processes load
(``tests.test_worker_processes:app``); each test points it at its own schema through the
environment.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import pgbatch
from pgbatch.worker.supervisor import run_supervisor

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parent.parent
APP_PATH = "tests.test_worker_processes:app"
SCHEMA_ENV = "PGBATCH_TEST_WORKER_SCHEMA"
EFFECTS_DSN_ENV = "PGBATCH_TEST_EFFECTS_DSN"
SLEEP_ENV = "PGBATCH_TEST_HANDLER_SLEEP"

app = pgbatch.App(
    schema=os.environ.get(SCHEMA_ENV, "pgbatch"),
    application_name=f"w-{os.environ.get(SCHEMA_ENV, 'pgbatch')}",
)
_local = threading.local()


@app.batch_handler("effects", batch_size=10)
def record_effects(batch: pgbatch.Batch[Any]) -> None:
    """Records who handled which message (a side effect outside the queue), then works."""
    conn = getattr(_local, "conn", None)
    if conn is None:
        conn = _local.conn = psycopg.connect(os.environ[EFFECTS_DSN_ENV], autocommit=True)
    conn.execute(
        f"INSERT INTO {app.schema}.effects (id, pid) SELECT unnest(%s::bigint[]), %s",
        ([m.id for m in batch], os.getpid()),
    )
    time.sleep(float(os.environ.get(SLEEP_ENV, "0")))


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def db(pg_dsn: str, schema: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {schema}.effects (id bigint NOT NULL, pid int NOT NULL)")
        yield conn


@pytest.fixture
def worker_env(pg_dsn: str, schema: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment of worker processes (and of a supervisor run in this process)."""
    values = {
        SCHEMA_ENV: schema,
        EFFECTS_DSN_ENV: pg_dsn,
        "PGBATCH_WORKER_DSN": pg_dsn,
        "PGBATCH_LOG_LEVEL": "INFO",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


def one(db: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    return db.execute(query, params).fetchone()[0]  # type: ignore[index]


def wait_until(
    predicate: Callable[[], Any], timeout: float = 20.0, what: str | Callable[[], str] = ""
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        description = what() if callable(what) else what
        assert time.monotonic() < deadline, f"timed out waiting for {description or predicate}"
        time.sleep(0.05)


class Child:
    """``python -m pgbatch.worker.child`` started the way the supervisor starts it."""

    def __init__(self, env: dict[str, str], log: Path, *args: str, sleep: float = 0.0) -> None:
        read_fd, write_fd = os.pipe()
        self.log = log
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pgbatch.worker.child",
                    APP_PATH,
                    "--ready-fd",
                    str(write_fd),
                    *args,
                ],
                env={**env, SLEEP_ENV: str(sleep)},
                cwd=ROOT,
                pass_fds=(write_fd,),
                stderr=stderr,
            )
        os.close(write_fd)
        self.ready_fd = read_fd

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait_ready(self, timeout: float = 20.0) -> None:
        readable, _, _ = select.select([self.ready_fd], [], [], timeout)
        assert readable and os.read(self.ready_fd, 1) == b"R", self.log.read_text()
        os.close(self.ready_fd)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(env: dict[str, str], *args: str, sleep: float = 0.0) -> Child:
        child = Child(env, tmp_path / f"child{len(started)}.log", *args, sleep=sleep)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()


def enqueue(pg_dsn: str, schema: str, count: int, **settings: Any) -> list[int]:
    with pgbatch.connect(pg_dsn, schema=schema, max_size=2) as client:
        return client.create_queue("effects", **settings).batch_enqueue(
            [{"n": i} for i in range(count)]
        )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- single worker processes ----------------------------------------------------------------


def test_sigkill_mid_batch_loses_nothing(pg_dsn, schema, db, worker_env, children):
    enqueue(pg_dsn, schema, 0, lease_seconds=1.5)  # the queue, before a worker creates it
    victim = children(worker_env, "--concurrency", "2", sleep=0.3)
    victim.wait_ready()
    ids = enqueue(pg_dsn, schema, 300)
    wait_until(
        lambda: one(db, f"SELECT count(*) FROM {schema}.effects WHERE pid = %s", victim.pid),
        what="the victim's first batch",
    )
    survivor = children(worker_env, "--concurrency", "2", sleep=0.02)
    survivor.wait_ready()
    victim.process.send_signal(signal.SIGKILL)  # mid-batch: its handler sleeps 0.3 s per batch
    assert victim.process.wait(5) == -signal.SIGKILL

    wait_until(
        lambda: one(db, f"SELECT count(*) FROM {schema}.archive") == 300,
        what=lambda: f"the survivor archiving everything: {survivor.log.read_text()[-3000:]}",
    )
    survivor.process.send_signal(signal.SIGTERM)
    assert survivor.process.wait(10) == 0

    archived = [r[0] for r in db.execute(f"SELECT id FROM {schema}.archive ORDER BY id")]
    assert archived == ids  # each exactly once
    assert one(db, f"SELECT count(*) FROM {schema}.message") == 0
    # The victim's batch really was in flight: the survivor handled it again, after the lease.
    redone = one(
        db,
        f"SELECT count(*) FROM (SELECT id FROM {schema}.effects GROUP BY id"
        f" HAVING count(DISTINCT pid) = 2) AS twice",
    )
    assert redone >= 10


def test_sigterm_mid_batch_exits_0_and_nothing_waits_out_a_lease(
    pg_dsn, schema, db, worker_env, children
):
    enqueue(pg_dsn, schema, 40, lease_seconds=60)
    child = children(worker_env, "--concurrency", "1", sleep=1.0)
    child.wait_ready()
    wait_until(lambda: one(db, f"SELECT count(*) FROM {schema}.effects") == 10)
    time.sleep(0.2)  # the next batch is fetched while the first runs
    assert one(db, f"SELECT count(*) FROM {schema}.message WHERE lease_token IS NOT NULL") == 20
    stopping = time.monotonic()
    child.process.send_signal(signal.SIGTERM)
    assert child.process.wait(10) == 0
    assert time.monotonic() - stopping < 3.0

    assert one(db, f"SELECT count(*) FROM {schema}.archive") == 10  # the running batch finished
    # The prefetched batch was handed back: all 30 left are visible now, none used an attempt.
    visible = one(
        db,
        f"SELECT count(*) FROM {schema}.message WHERE visible_at <= now()"
        f" AND lease_token IS NULL AND attempts = 0",
    )
    assert visible == 30
    assert one(db, f"SELECT count(*) FROM {schema}.worker WHERE stopped_at IS NOT NULL") == 1
    assert "SIGTERM: stopping" in child.log.read_text()


def test_a_second_signal_stops_at_once(pg_dsn, schema, db, worker_env, children):
    enqueue(pg_dsn, schema, 10, lease_seconds=60)
    child = children(worker_env, "--concurrency", "1", sleep=30.0)
    child.wait_ready()
    wait_until(lambda: one(db, f"SELECT count(*) FROM {schema}.effects") == 10)
    child.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    assert child.process.poll() is None  # still finishing its batch
    stopping = time.monotonic()
    child.process.send_signal(signal.SIGINT)
    assert child.process.wait(5) == 1
    assert time.monotonic() - stopping < 1.0
    # Nothing settled: the batch comes back when its lease expires, as after a crash.
    assert one(db, f"SELECT count(*) FROM {schema}.message WHERE lease_token IS NOT NULL") == 10


def test_a_bad_app_path_exits_2_with_one_line(worker_env, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pgbatch.worker.child", "tests.no_such_module:app"],
        env=worker_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no module named 'tests.no_such_module'" in lines[0]


# --- the supervisor ---------------------------------------------------------------------------


def supervisor_process(env: dict[str, str], log: Path, **options: Any) -> subprocess.Popen[bytes]:
    code = (
        "import sys\n"
        "from pgbatch.worker.supervisor import run_supervisor\n"
        f"sys.exit(run_supervisor({APP_PATH!r}, **{options!r}))\n"
    )
    with log.open("ab") as stderr:
        return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT, stderr=stderr)


def live_workers(db: psycopg.Connection[Any], schema: str) -> list[int]:
    return [
        r[0]
        for r in db.execute(
            f"SELECT pid FROM {schema}.worker WHERE stopped_at IS NULL ORDER BY started_at"
        )
    ]


def test_the_supervisor_restarts_a_killed_child(pg_dsn, schema, db, worker_env, tmp_path):
    enqueue(pg_dsn, schema, 0)
    log = tmp_path / "supervisor.log"
    supervisor = supervisor_process(worker_env, log, processes=2)
    try:
        first = wait_until(
            lambda: (p := live_workers(db, schema)) and len(p) == 2 and p, what="two workers"
        )
        os.kill(first[0], signal.SIGKILL)
        after = wait_until(
            lambda: (p := [x for x in live_workers(db, schema) if x not in first]) and p,
            what="a replacement worker",
        )
        assert alive(first[1]) and not alive(first[0])
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(20) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
    assert not alive(first[1]) and not alive(after[0])
    text = log.read_text()
    assert f"(pid {first[0]}) was killed by SIGKILL; restarting it" in text
    assert live_workers(db, schema) == [first[0]]  # only the killed one never signed off


def test_the_supervisor_drains_with_two_processes(pg_dsn, schema, db, worker_env, monkeypatch):
    monkeypatch.setenv(SLEEP_ENV, "0.2")  # alone, one process would take 2 s: both take part
    ids = enqueue(pg_dsn, schema, 2000)
    started = time.monotonic()
    assert run_supervisor(APP_PATH, processes=2, until_empty=True, batch_size=50, dsn=pg_dsn) == 0
    assert time.monotonic() - started < 30
    archived = [r[0] for r in db.execute(f"SELECT id FROM {schema}.archive ORDER BY id")]
    assert archived == ids
    handled_by = db.execute(f"SELECT DISTINCT pid FROM {schema}.effects").fetchall()
    assert len(handled_by) == 2
    assert one(db, f"SELECT count(*) FROM {schema}.worker WHERE stopped_at IS NOT NULL") == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_supervisor_serves_metrics_of_all_processes(pg_dsn, schema, db, worker_env, tmp_path):
    enqueue(pg_dsn, schema, 500)
    port = free_port()
    supervisor = supervisor_process(worker_env, tmp_path / "s.log", processes=2, metrics_port=port)
    try:
        wait_until(lambda: one(db, f"SELECT count(*) FROM {schema}.archive") == 500)
        wait_until(lambda: len(live_workers(db, schema)) == 2)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                return str(r.read().decode())

        def archived_total() -> float:
            for line in scrape().splitlines():
                if line.startswith('pgbatch_messages_archived_total{queue="effects"}'):
                    return float(line.split()[-1])
            return 0.0

        wait_until(lambda: archived_total() == 500, timeout=10, what="archived_total 500")
        text = scrape()
        assert 'pgbatch_batch_duration_seconds_count{queue="effects"}' in text
        assert 'pgbatch_queue_depth{queue="effects"}' in text  # published by one process
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(20) == 0
    finally:
        if supervisor.poll() is None:
            supervisor.kill()


def test_the_supervisor_gives_up_on_a_child_that_cannot_start(worker_env, pg_dsn):
    started = time.monotonic()
    assert run_supervisor("tests.no_such_module:app", processes=2, dsn=pg_dsn) == 2
    unreachable = "postgresql://postgres@127.0.0.1:1/test"
    assert run_supervisor(APP_PATH, dsn=unreachable) == 1
    assert time.monotonic() - started < 30


def test_children_stop_when_the_supervisor_is_killed(pg_dsn, schema, db, worker_env, tmp_path):
    enqueue(pg_dsn, schema, 0)
    supervisor = supervisor_process(worker_env, tmp_path / "s.log", processes=2)
    try:
        pids = wait_until(lambda: (p := live_workers(db, schema)) and len(p) == 2 and p)
    finally:
        supervisor.kill()
        supervisor.wait()
    wait_until(lambda: not any(alive(pid) for pid in pids), timeout=10, what="orphans to stop")
    assert live_workers(db, schema) == []  # they stopped gracefully and signed off
