"""A DSN password never leaks from ``pgbatch worker``'s processes, for real.

``tests/test_secrets.py`` checks errors, logs and the registry in this process; here the real
command runs a supervisor and two children, at DEBUG, with a distinctive password in its
``--dsn`` (URL and key=value form). While it works (messages archived, one failed, one
handler raising, its connections terminated under it) the children's command lines and the
worker registry rows are read; after SIGTERM, everything it wrote to stdout and stderr.

The module-level ``app`` below is what the children load (``tests.test_secrets_processes:app``);
the test points it at its own schema through the environment.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgbatch
from tests.test_secrets import Secret
from tests.test_worker_processes import ROOT, free_port, wait_until

pytestmark = pytest.mark.timeout(120)

APP_PATH = "tests.test_secrets_processes:app"
SCHEMA_ENV = "PGBATCH_TEST_SECRETS_SCHEMA"
PGBATCH = [sys.executable, "-m", "pgbatch.cli"]
HANDLER_ERROR = "told to raise"

app = pgbatch.App(
    schema=os.environ.get(SCHEMA_ENV, "pgbatch"),
    application_name=f"s-{os.environ.get(SCHEMA_ENV, 'pgbatch')}",
)


@app.batch_handler("jobs", batch_size=5)
def handle(batch: pgbatch.Batch[Any]) -> None:
    """Works, fails the messages told to fail, raises on a batch with one told to raise."""
    for message in batch:
        if message.payload.get("fail"):
            batch.fail(message, "told to fail")
    if any(m.payload.get("raise") for m in batch):
        raise RuntimeError(HANDLER_ERROR)


# --- helpers ------------------------------------------------------------------------------------

DSN_FORMS: dict[str, Callable[..., str]] = {"url": Secret.url_dsn, "keyword": Secret.keyword_dsn}


@pytest.fixture
def secret(pg_dsn: str) -> Secret:
    return Secret(pg_dsn)


@pytest.fixture(params=sorted(DSN_FORMS))
def dsn_form(request: pytest.FixtureRequest, secret: Secret) -> Callable[..., str]:
    """Writes a DSN to the test server (or, with overrides, elsewhere) that carries the
    password in one form."""
    form = DSN_FORMS[request.param]
    with pytest.raises(AssertionError, match="leaked"):
        secret.assert_absent(form(secret))  # the detector sees the password in this form
    return form


@pytest.fixture
def worker_command(
    tmp_path: Path, schema: str
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path]]]:
    """Starts ``pgbatch worker`` at DEBUG, stdout and stderr together in a file."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], Path]:
        output = tmp_path / f"worker{len(started)}.log"
        env = {**os.environ, SCHEMA_ENV: schema, "PGBATCH_LOG_LEVEL": "DEBUG"}
        with output.open("ab") as sink:
            process = subprocess.Popen(
                [*PGBATCH, "worker", APP_PATH, *args],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        started.append(process)
        return process, output

    yield start
    for process in started:  # a failed test must not leave workers behind
        if process.poll() is None:
            process.kill()
            process.wait()


def child_pids(parent: int) -> set[int]:
    """The pids whose parent is ``parent`` (from /proc: no dependency for one lookup)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process exited while we looked
            continue
        if int(fields[1]) == parent:
            found.add(int(stat.parent.name))
    return found


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def registry_rows(conn: psycopg.Connection[Any], schema: str) -> list[tuple[int, str]]:
    """Each worker row: its pid, and the text of every column (decoded, not as JSON text,
    where a backslash before a quote would be doubled and hide the password)."""
    query = sql.SQL("SELECT pid, to_jsonb(w) FROM {} w ORDER BY pid").format(
        sql.Identifier(schema, "worker")
    )
    return [(row[0], " ".join(map(column_text, row[1].values()))) for row in conn.execute(query)]


def column_text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, list) else str(value)


def terminate_backends(conn: psycopg.Connection[Any], application_name: str) -> int:
    """Kills the worker's connections (the listener's too), so reconnections get logged."""
    row = conn.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE application_name LIKE %s",
        (application_name + "%",),
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- the tests --------------------------------------------------------------------------------


def test_worker_processes_never_show_the_password(
    secret: Secret, dsn_form: Callable[..., str], schema: str, worker_command: Any
) -> None:
    dsn = dsn_form(secret)
    with pgbatch.connect(dsn, schema=schema, max_size=2) as client:
        queue = client.create_queue("jobs", max_attempts=1)
    process, output = worker_command("--processes", "2", "--dsn", dsn)
    with psycopg.connect(dsn, autocommit=True) as conn, pgbatch.connect(dsn, schema=schema) as c:
        queue = c.queue("jobs")
        live = wait_until(
            lambda: len(rows := registry_rows(conn, schema)) == 2 and rows,
            what=lambda: f"two live workers: {output.read_text()[-3000:]}",
        )
        queue.batch_enqueue([{"n": n} for n in range(40)] + [{"fail": True}, {"raise": True}])
        wait_until(
            lambda: (s := queue.stats()).archived == 40 and s.dead == 2,
            what=lambda: f"40 archived, 2 dead: {queue.stats()}",
        )
        assert terminate_backends(conn, f"s-{schema}") >= 2
        queue.batch_enqueue([{"n": n} for n in range(10)])
        wait_until(lambda: queue.stats().archived == 50, what="the worker to reconnect")

        # The children are the workers in the registry; their command lines hold no DSN.
        children = child_pids(process.pid)
        assert children == {pid for pid, _ in live}
        for pid in children:
            line = command_line(pid)
            assert "pgbatch.worker.child" in line
            secret.assert_absent(line)
        # The operator's own --dsn is on the supervisor's line: the check reads it as it is.
        with pytest.raises(AssertionError, match="leaked"):
            secret.assert_absent(command_line(process.pid))

        running = registry_rows(conn, schema)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
        stopped = registry_rows(conn, schema)

    assert len(running) == len(stopped) == 2  # no child died and was replaced
    for _pid, row in running + stopped:
        secret.assert_absent(row)
    text = output.read_text(errors="replace")
    # What the check ran over: debug logging, the handler's error with its traceback, the
    # failures of the terminated connections, and each child's sign-off.
    assert " DEBUG " in text
    assert f"RuntimeError: {HANDLER_ERROR}" in text and "Traceback" in text
    assert "listener connection lost" in text
    assert text.count(" stopped: ") == 2
    secret.assert_absent(text)


def test_unreachable_database_names_the_place_never_the_password(
    secret: Secret, dsn_form: Callable[..., str], worker_command: Any
) -> None:
    port = free_port()  # nothing listens there
    dsn = dsn_form(secret, port=port)
    process, output = worker_command("--processes", "2", "--debug", "--dsn", dsn)
    assert process.wait(60) == 1
    text = output.read_text(errors="replace")
    assert f"{secret.params.get('host', '127.0.0.1')}:{port}" in text, text
    assert "before it started working" in text
    secret.assert_absent(text)
