"""Each command through typer's CliRunner against a real PostgreSQL (the test's schema)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import orjson
import psycopg
import pytest
import typer
from psycopg import sql
from typer.testing import CliRunner, Result

import pgbatch
from pgbatch import errors
from pgbatch.cli import app
from pgbatch.cli.options import format_duration, parse_batch_size, parse_duration

Invoke = Callable[..., Result]


@pytest.fixture
def cli(pg_dsn: str, schema: str) -> Invoke:
    """Runs ``pgbatch ARGS --dsn ... --schema ...`` in-process; fails on an unexpected exit."""
    runner = CliRunner()

    def invoke(
        *args: str, input: str | bytes | None = None, code: int = 0, connection: bool = True
    ) -> Result:
        extra = ["--dsn", pg_dsn, "--schema", schema] if connection else []
        result = runner.invoke(app, [*args, *extra], input=input)
        assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
        return result

    return invoke


def sql_run(client: pgbatch.Client, query: str, params: tuple[Any, ...] = ()) -> list[tuple]:
    composed = sql.SQL(query).format(s=sql.Identifier(client.schema))
    with client.db.connection() as conn:
        cur = conn.execute(composed, params)
        return cur.fetchall() if cur.description else []


def all_command_paths() -> list[list[str]]:
    """Every command and subcommand of the CLI, as argument lists."""
    paths = []

    def walk(command: Any, prefix: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            paths.append(prefix)
            return
        for name, sub in subcommands.items():
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


# --- help, parsing, usage errors -------------------------------------------------------------


def test_the_cli_has_every_command_of_the_issue():
    names = {" ".join(path) for path in all_command_paths()}
    expected = {
        "migrate",
        "enqueue",
        "worker",
        "stats",
        "workers",
        "demo",
        "dead list",
        "dead requeue",
        "dead purge",
        "archive prune",
        "queue create",
        "queue list",
        "queue purge",
        "queue drop",
        "queue pause",
        "queue resume",
        "roles",
    }
    assert names == expected


@pytest.mark.parametrize("path", all_command_paths(), ids=" ".join)
def test_every_command_explains_itself_with_examples(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: pgbatch {' '.join(path)}" in result.stdout
    assert "Example" in result.stdout
    assert "pgbatch " + path[0] in result.stdout.split("Example", 1)[1]


def test_root_help_and_version():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "pgbatch demo" in result.stdout
    version = CliRunner().invoke(app, ["--version"])
    assert version.stdout.strip() == f"pgbatch {pgbatch.__version__}"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("7d", 7 * 86400),
        ("1h30m", 5400),
        ("500ms", 0.5),
        ("2w", 14 * 86400),
        ("45", 45),
        ("1.5h", 5400),
        (" 3M ", 180),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "5x", "m", "10 m", "1h-5m", "-3s", "1h30", "s30"])
def test_bad_durations_are_usage_errors(text):
    with pytest.raises(typer.BadParameter, match="not a duration"):
        parse_duration(text)


def test_format_duration_and_batch_size():
    assert [format_duration(s) for s in (0.25, 30, 5400, 90061)] == [
        "250ms",
        "30s",
        "1h30m",
        "1d1h1m1s",
    ]
    assert parse_batch_size("auto") == "auto" and parse_batch_size("250") == 250
    for bad in ("0", "-1", "lots"):
        with pytest.raises(typer.BadParameter):
            parse_batch_size(bad)


def test_a_bad_flag_value_exits_2_with_the_usage(cli):
    result = cli("archive", "prune", "--older-than", "5 parsecs", code=2)
    assert "not a duration" in result.stderr and "Usage:" in result.stderr
    assert result.stdout == ""
    cli("dead", "requeue", "jobs", code=2)  # neither --id nor --all
    cli("worker", "not a path", code=2, connection=False)
    cli("worker", "tasks:app", "--batch-size", "zero", code=2, connection=False)


def test_a_runtime_error_is_one_line_on_stderr_and_exit_1(cli):
    result = cli("stats", "nope", code=1)
    assert result.stderr.strip().splitlines() == ["pgbatch: no queue named 'nope'"]
    assert "Traceback" not in result.output


def test_debug_lets_the_traceback_through(pg_dsn, schema):
    result = CliRunner().invoke(
        app, ["stats", "nope", "--dsn", pg_dsn, "--schema", schema, "--debug"]
    )
    assert result.exit_code == 1
    assert isinstance(result.exception, errors.QueueNotFound)


def test_an_unreachable_server_is_named_without_the_password():
    result = CliRunner().invoke(
        app, ["queue", "list", "--dsn", "postgresql://alice:pa55-s3cret@127.0.0.1:1/db"]
    )
    assert result.exit_code == 1
    [line] = result.stderr.strip().splitlines()
    assert "127.0.0.1:1" in line and "pa55-s3cret" not in result.output


# --- migrate and lazy migration -------------------------------------------------------------


@pytest.fixture
def fresh_schema(pg_dsn: str) -> Iterator[str]:
    name = f"t_fresh_{uuid.uuid4().hex[:8]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_migrate_then_up_to_date(pg_dsn, fresh_schema):
    runner = CliRunner()
    args = ["migrate", "--dsn", pg_dsn, "--schema", fresh_schema]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "applied 0001" in first.stdout
    again = runner.invoke(app, [*args, "--json"])
    assert orjson.loads(again.stdout) == {
        "schema": fresh_schema,
        "applied": [],
        "partitions_created": 0,
    }


def test_commands_migrate_a_fresh_schema_on_first_use(pg_dsn, fresh_schema):
    result = CliRunner().invoke(app, ["queue", "list", "--dsn", pg_dsn, "--schema", fresh_schema])
    assert result.exit_code == 0, result.output
    assert f"migrated schema {fresh_schema!r}" in result.stderr
    assert "No queues yet" in result.stdout


# --- queues ----------------------------------------------------------------------------------


def test_queue_lifecycle(cli, client):
    created = cli(
        "queue",
        "create",
        "mail",
        "--lease",
        "2m",
        "--max-attempts",
        "7",
        "--backoff-base",
        "5s",
        "--backoff-max",
        "1h",
    )
    assert "Created queue 'mail'" in created.stdout
    assert "already exists" in cli("queue", "create", "mail", "--lease", "1s").stdout
    [info] = orjson.loads(cli("queue", "list", "--json").stdout)
    assert (info["name"], info["lease_seconds"], info["max_attempts"]) == ("mail", 120.0, 7)
    assert (info["backoff_base_seconds"], info["backoff_max_seconds"]) == (5.0, 3600.0)
    assert "mail" in cli("queue", "list").stdout

    mail = client.queue("mail")
    mail.batch_enqueue([{"n": i} for i in range(5)])
    cli("queue", "pause", "mail")
    assert client.queue("mail").info.paused and mail.dequeue_many(5) == []
    cli("queue", "resume", "mail")
    assert len(mail.dequeue_many(2)) == 2

    refused = cli("queue", "purge", "mail", input="n\n", code=1)
    assert "Aborted" in refused.output and mail.stats().ready == 3
    assert "Purged 5 messages" in cli("queue", "purge", "mail", "--yes").stdout
    cli("queue", "drop", "mail", input="y\n")
    with pytest.raises(errors.QueueNotFound):
        client.queue("mail")
    assert cli("queue", "drop", "mail", "--yes", code=1).stderr.startswith("pgbatch: no queue")


def test_queue_create_refuses_bad_names_and_settings(cli):
    assert "invalid queue name" in cli("queue", "create", "1bad name", code=1).stderr
    [line] = cli("queue", "create", "ok", "--lease", "0s", code=1).stderr.splitlines()
    assert line.startswith("pgbatch: lease must be") and "0.0" in line


# --- enqueue (in-process; the large file and stdin run as subprocesses elsewhere) -----------


def test_enqueue_arguments_with_delay_and_priority(cli, queue):
    out = cli("enqueue", "jobs", '{"a": 1}', "[1, 2]", '"text"', "--priority", "5")
    assert "Enqueued 3 messages to 'jobs'" in out.stdout
    cli("enqueue", "jobs", '{"later": true}', "--delay", "1h")
    stats = queue.stats()
    assert (stats.ready, stats.delayed) == (3, 1)
    taken = queue.dequeue_many(10)
    assert [m.payload for m in taken] == [{"a": 1}, [1, 2], "text"]
    assert {m.priority for m in taken} == {5}
    assert "not JSON" in cli("enqueue", "jobs", "{bad", code=2).stderr
    cli("enqueue", "jobs", code=2)  # nothing to enqueue


def test_enqueue_stdin_with_dedup_key_field(cli, queue):
    lines = b"".join(orjson.dumps({"order": i % 3, "n": i}) + b"\n" for i in range(6))
    result = cli(
        "enqueue",
        "jobs",
        "--file",
        "-",
        "--dedup-key-field",
        "order",
        "--json",
        input=lines + b"\n",
    )
    summary = orjson.loads(result.stdout)
    assert summary["enqueued"] == 6 and summary["blank_lines"] == 1
    assert queue.stats().ready == 3  # one message per order key still in the queue
    bad = cli(
        "enqueue", "jobs", "--file", "-", "--dedup-key-field", "order", input=b'{"n": 1}\n', code=1
    )
    assert "line 1: no 'order' field" in bad.stderr


def test_enqueue_into_a_missing_queue_needs_create(cli, client):
    assert "no queue named 'fresh'" in cli("enqueue", "fresh", "1", code=1).stderr
    cli("enqueue", "fresh", "1", "--create")
    assert client.queue("fresh").stats().ready == 1


def test_enqueue_refuses_a_payload_above_the_queue_limit_by_line(cli, client, tmp_path):
    client.create_queue("small", max_payload_bytes=50)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"ok": 1}\n{"big": "' + b"x" * 100 + b'"}\n{"ok": 2}\n')
    stopped = cli("enqueue", "small", "--file", str(path), code=1)
    assert "line 2:" in stopped.stderr and "above the limit" in stopped.stderr
    assert client.queue("small").stats().ready == 0  # its batch is not written
    skipped = cli("enqueue", "small", "--file", str(path), "--skip-invalid", "--json")
    report = orjson.loads(skipped.stdout)
    assert report["enqueued"] == 2 and [b["line"] for b in report["invalid_lines"]] == [2]
    assert client.queue("small").stats().ready == 2


# --- stats, workers --------------------------------------------------------------------------


def test_stats_json_matches_the_queue(cli, client, queue):
    queue.batch_enqueue([{"i": i} for i in range(10)])
    queue.enqueue({"later": 1}, delay=timedelta(hours=1))
    queue.archive_many(queue.dequeue_many(3))
    queue.dequeue_many(2)
    client.create_queue("empty")
    snapshot = orjson.loads(cli("stats", "--json").stdout)
    by_name = {row["queue"]: row for row in snapshot["queues"]}
    assert set(by_name) == {"jobs", "empty"}
    expected = queue.stats()
    row = by_name["jobs"]
    assert (
        (row["ready"], row["leased"], row["delayed"], row["archived"], row["dead"])
        == (expected.ready, expected.leased, expected.delayed, expected.archived, expected.dead)
        == (5, 2, 1, 3, 0)
    )
    assert row["throughput_per_second"] == pytest.approx(3 / 60)
    assert snapshot["health"]["table_bytes"] > 0
    only = orjson.loads(cli("stats", "jobs", "--json").stdout)
    assert [r["queue"] for r in only["queues"]] == ["jobs"]
    table = cli("stats").stdout
    assert "jobs" in table and "empty" in table and "message table" in table


def test_stats_watch_json_prints_one_document_per_refresh(cli, queue):
    out = cli("stats", "jobs", "--watch", "--json", "--count", "3", "--interval", "100ms")
    docs = [orjson.loads(line) for line in out.stdout.splitlines()]
    assert len(docs) == 3 and all(d["queues"][0]["queue"] == "jobs" for d in docs)


def test_stats_warns_about_a_transaction_holding_the_xmin_horizon(cli, pg_dsn, queue):
    with psycopg.connect(pg_dsn, application_name="cli-test-holder") as holder:
        holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        holder.execute("SELECT 1").fetchone()
        time.sleep(1.2)
        out = cli("stats", "--xmin-warn-after", "1s", "--json")
        pid = holder.info.backend_pid
        holder.rollback()
    warnings = orjson.loads(out.stdout)["warnings"]
    assert any(f"session {pid} (cli-test-holder" in w for w in warnings), warnings


def test_workers_lists_live_lost_and_stopped(cli, client):
    sql_run(
        client,
        """
        INSERT INTO {s}.worker (id, host, pid, queues, started_at, heartbeat_at, stopped_at,
                                batches_done, messages_done)
        VALUES ('w-live', 'h1', 11, ARRAY['jobs'], now(), now(), NULL, 3, 300),
               ('w-lost', 'h2', 12, ARRAY['jobs'], now() - interval '10 min',
                now() - interval '5 min', NULL, 1, 100),
               ('w-stopped', 'h3', 13, ARRAY['a', 'b'], now() - interval '20 min',
                now() - interval '15 min', now() - interval '15 min', 0, 0),
               ('w-old', 'h4', 14, ARRAY['jobs'], now() - interval '3 days',
                now() - interval '2 days', now() - interval '2 days', 0, 0)
    """,
    )
    rows = orjson.loads(cli("workers", "--json").stdout)
    assert {r["id"]: r["state"] for r in rows} == {
        "w-live": "live",
        "w-lost": "lost",
        "w-stopped": "stopped",
    }
    assert next(r for r in rows if r["id"] == "w-live")["messages_done"] == 300
    wider = orjson.loads(cli("workers", "--json", "--recent", "7d").stdout)
    assert "w-old" in {r["id"] for r in wider}
    text = cli("workers").stdout
    assert "w-live" in text and "1 live, 2 stopped or lost." in text


# --- dead letters ----------------------------------------------------------------------------


def make_dead(queue: pgbatch.Queue[Any], count: int) -> list[int]:
    ids = queue.batch_enqueue([{"poison": i} for i in range(count)])
    for _ in range(queue.info.max_attempts):
        taken = queue.dequeue_many(count)
        queue.fail_many(taken, "[bold]boom[/bold] at line 1", delay=0)
    assert sorted(d.id for d in queue.dead_letters()) == ids
    return ids


def test_dead_list_requeue_and_purge(cli, queue):
    ids = make_dead(queue, 3)
    listed = orjson.loads(cli("dead", "list", "jobs", "--json").stdout)
    assert [d["id"] for d in listed] == ids
    assert listed[0]["last_error"] == "[bold]boom[/bold] at line 1"
    assert listed[0]["payload"] == {"poison": 0} and listed[0]["attempts"] == 3
    table = cli("dead", "list", "jobs").stdout
    assert "[bold]boom" in table  # error texts are shown as text, never as markup

    assert "Requeued 1 dead letters" in cli("dead", "requeue", "jobs", "--id", str(ids[0])).stdout
    [back] = queue.dequeue_many(10)
    assert back.id == ids[0] and back.attempts == 1
    partly = cli("dead", "requeue", "jobs", "--id", str(ids[1]), "--id", "999999").stdout
    assert "Requeued 1 dead letters" in partly and "1 of the ids given" in partly
    assert "Deleted 1 dead letters" in cli("dead", "purge", "jobs", "--yes").stdout
    assert queue.dead_letters() == []
    assert "No dead letters" in cli("dead", "list", "jobs").stdout


def test_dead_requeue_all(cli, queue):
    make_dead(queue, 4)
    assert "Requeued 4 dead letters" in cli("dead", "requeue", "jobs", "--all").stdout
    assert queue.stats().ready == 4


# --- archive prune ---------------------------------------------------------------------------


def test_archive_prune_drops_the_old_days(cli, client, queue):
    sql_run(client, "SELECT {s}.archive_ensure_partitions(current_date - 10, 1)")
    [(name,)] = sql_run(client, "SELECT 'archive_p' || to_char(current_date - 10, 'YYYYMMDD')")
    sql_run(
        client,
        """
        INSERT INTO {s}.archive (id, queue_id, priority, attempts, enqueued_at, archived_at,
                                 payload)
        SELECT i, %s, 0, 1, now(), (current_date - 10)::timestamptz + i * interval '1 s',
               '{{}}'::jsonb
        FROM generate_series(1, 1000) AS i
    """,
        (queue.info.id,),
    )
    report = orjson.loads(cli("archive", "prune", "--older-than", "7d", "--json").stdout)
    assert report["dropped_partitions"] == [name] and report["deleted_rows"] == 0
    assert report["partitions_created"] == 0
    [(exists,)] = sql_run(
        client, "SELECT to_regclass(%s) IS NOT NULL", (f"{client.schema}.{name}",)
    )
    assert not exists
    text = cli("archive", "prune", "--older-than", "7d", "--queue", "jobs").stdout
    assert "dropped 0 daily partitions, deleted 0 rows" in text
    assert (
        "no queue named"
        in cli("archive", "prune", "--older-than", "1d", "--queue", "x", code=1).stderr
    )


# --- roles -----------------------------------------------------------------------------------


def test_roles_creates_the_group_roles(cli, pg_dsn):
    prefix = f"t{uuid.uuid4().hex[:10]}"
    names = [f"{prefix}_{kind}" for kind in ("owner", "producer", "worker", "reader")]
    try:
        result = orjson.loads(cli("roles", "--prefix", prefix, "--json").stdout)
        assert result["roles"] == names
        with psycopg.connect(pg_dsn) as conn:
            found = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (names,)
            ).fetchall()
        assert sorted(r[0] for r in found) == sorted(names)
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as admin:
            for role in names:
                if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    ident = sql.Identifier(role)
                    admin.execute(sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(ident))
                    admin.execute(sql.SQL("DROP OWNED BY {}").format(ident))
                    admin.execute(sql.SQL("DROP ROLE {}").format(ident))
