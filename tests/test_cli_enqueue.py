"""``pgbatch enqueue`` as a real process against a real PostgreSQL: files, stdin, bad lines,
and the one-line error for an unreachable server."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from psycopg import sql

from tests.stored import stored_messages

PGBATCH = [sys.executable, "-m", "pgbatch.cli"]


def pgbatch_process(
    *args: str, input: bytes | None = None, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*PGBATCH, *args],
        input=input,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def write_jsonl(path: Path, count: int, bad: dict[int, bytes] | None = None) -> Path:
    """``count`` lines like the benchmark's messages; ``bad`` replaces lines (1-based)."""
    bad = bad or {}
    with path.open("wb") as out:
        for i in range(count):
            line = bad.get(i + 1) or orjson.dumps({"user_id": i, "email": f"u{i}@example.com"})
            out.write(line + b"\n")
    return path


@pytest.fixture
def connection(pg_dsn: str, schema: str) -> list[str]:
    return ["--dsn", pg_dsn, "--schema", schema]


def test_enqueue_a_file_of_100000_lines(tmp_path, connection, client, queue):
    path = write_jsonl(tmp_path / "users.jsonl", 100_000)
    started = time.perf_counter()
    done = pgbatch_process("enqueue", "jobs", "--file", str(path), "--json", *connection)
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr.decode()
    summary = orjson.loads(done.stdout)
    assert summary["enqueued"] == 100_000 and summary["invalid_lines"] == []
    print(
        f"\nenqueue 100,000 lines: {summary['rate']:,.0f} msg/s in the loop, "
        f"{wall:.2f} s for the whole process"
    )
    assert queue.stats().ready == 100_000
    with client.db.connection() as conn:
        first, last = conn.execute(
            sql.SQL(
                "(SELECT payload FROM {t} AS m ORDER BY id LIMIT 1)"
                " UNION ALL (SELECT payload FROM {t} AS m ORDER BY id DESC LIMIT 1)"
            ).format(t=stored_messages(client.schema))
        ).fetchall()
    assert first[0] == {"user_id": 0, "email": "u0@example.com"}  # input order kept
    assert last[0] == {"user_id": 99_999, "email": "u99999@example.com"}
    assert done.stderr == b""  # no progress bar when stderr is not a terminal


def test_enqueue_from_stdin(connection, queue):
    lines = b"".join(orjson.dumps({"n": i}) + b"\n" for i in range(5000))
    done = pgbatch_process(
        "enqueue", "jobs", "--file", "-", "--batch-size", "700", *connection, input=lines
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"Enqueued 5,000 messages to 'jobs'" in done.stdout
    assert sorted(m.payload["n"] for m in queue.dequeue_many(10_000)) == list(range(5000))


def test_a_malformed_line_stops_before_its_batch(tmp_path, connection, queue):
    path = write_jsonl(tmp_path / "in.jsonl", 2500, bad={1700: b'{"user_id": 1699,'})
    done = pgbatch_process("enqueue", "jobs", "--file", str(path), *connection)
    assert done.returncode == 1
    [line] = done.stderr.decode().strip().splitlines()
    assert line.startswith("pgbatch: line 1700: invalid JSON")
    assert "lines 1001-2000" in line and "1,000 messages up to line 1000 were written" in line
    assert done.stdout == b""
    # The batch before it is written; its own batch and the rest are not.
    assert queue.stats().ready == 1000


def test_skip_invalid_writes_the_rest_and_lists_the_bad_lines(tmp_path, connection, queue):
    path = write_jsonl(tmp_path / "in.jsonl", 2500, bad={3: b"not json", 1700: b"[1,"})
    done = pgbatch_process("enqueue", "jobs", "--file", str(path), "--skip-invalid", *connection)
    assert done.returncode == 0, done.stderr.decode()
    assert b"Enqueued 2,498 messages" in done.stdout and b"skipped 2 invalid lines" in done.stdout
    listed = done.stderr.decode().splitlines()
    assert listed[0].startswith("  skipped line 3: invalid JSON")
    assert listed[1].startswith("  skipped line 1700: invalid JSON")
    payloads = {m.payload["user_id"] for m in queue.dequeue_many(10_000)}
    assert len(payloads) == 2498 and 2 not in payloads and 1699 not in payloads


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://alice:Sup3r-s3cret@127.0.0.1:1/app",
        "host=127.0.0.1 port=1 user=alice password=Sup3r-s3cret dbname=app",
    ],
)
def test_an_unreachable_server_gives_one_line_naming_host_and_port(dsn):
    done = pgbatch_process("stats", "--dsn", dsn, timeout=60)
    assert done.returncode == 1
    err = done.stderr.decode()
    [line] = err.strip().splitlines()
    assert line.startswith("pgbatch: ") and "127.0.0.1:1" in line
    assert "Sup3r-s3cret" not in err + done.stdout.decode()
    assert "Traceback" not in err


def test_the_dsn_comes_from_the_environment(pg_dsn, schema, queue):
    done = pgbatch_process(
        "stats",
        "jobs",
        "--json",
        "--schema",
        schema,
        env={"PGBATCH_DSN": "", "DATABASE_URL": pg_dsn},
    )
    assert done.returncode == 0, done.stderr.decode()
    assert orjson.loads(done.stdout)["queues"][0]["queue"] == "jobs"
