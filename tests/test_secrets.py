"""A DSN password never leaks: not in errors, logs, ``--json`` output or the worker registry.

Each test puts a distinctive password in the DSN, in URL and in key=value form. Against a
server that trusts local connections the password is simply ignored; against one that
requires it (the embedded server) the suite's own password is the secret to look for.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import traceback
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from typer.testing import CliRunner

import pgbatch
from pgbatch import errors
from pgbatch.cli.app import app as cli_app


class Secret:
    """The password to hunt for, and DSNs that carry it."""

    def __init__(self, pg_dsn: str) -> None:
        params = conninfo_to_dict(pg_dsn)
        # '@', ':', ' ' and quotes test the parsers too; trust auth ignores the value.
        self.password = str(params.get("password") or f"pw@:{secrets.token_hex(8)} 'x")
        self.params = {**params, "password": self.password}

    @property
    def forms(self) -> list[str]:
        """Every way the password may be written (and so may leak)."""
        return [self.password, quote(self.password, safe=""), self.password.replace("'", "\\'")]

    def keyword_dsn(self, **overrides: Any) -> str:
        return make_conninfo("", **{**self.params, **overrides})

    def url_dsn(self, **overrides: Any) -> str:
        p = {**self.params, **overrides}
        user = quote(str(p.get("user") or "postgres"), safe="")
        host, port, dbname = p.get("host", "127.0.0.1"), p.get("port", 5432), p.get("dbname", "")
        return f"postgresql://{user}:{quote(self.password, safe='')}@{host}:{port}/{dbname}"

    def dsns(self, **overrides: Any) -> list[str]:
        return [self.url_dsn(**overrides), self.keyword_dsn(**overrides)]

    def assert_absent(self, text: str) -> None:
        for form in self.forms:
            assert form not in text, f"password leaked: {text!r}"


@pytest.fixture
def secret(pg_dsn: str) -> Secret:
    return Secret(pg_dsn)


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every logger, pgbatch's and psycopg's included, at DEBUG."""
    with caplog.at_level(logging.DEBUG):
        yield caplog


def everything_shown(exc: BaseException) -> str:
    """What a traceback shows of an error: its chain of causes and contexts, and their args."""
    shown = "".join(traceback.format_exception(exc))
    while exc is not None:
        shown += repr(exc) + repr(exc.args)
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return shown


def test_unreachable_server_error_names_the_place_never_the_password(secret, all_logs):
    for dsn in secret.dsns(port=1):
        with pytest.raises(AssertionError, match="leaked"):
            secret.assert_absent(dsn)  # the detector sees the password in each DSN form
        with pytest.raises(errors.DatabaseUnavailable) as caught:
            pgbatch.connect(dsn, timeout=2)
        assert "127.0.0.1:1" in str(caught.value) or ":1/" in str(caught.value)
        secret.assert_absent(everything_shown(caught.value))
    secret.assert_absent(all_logs.text)


async def test_unreachable_server_async_error_never_shows_the_password(secret, all_logs):
    for dsn in secret.dsns(port=1):
        with pytest.raises(errors.DatabaseUnavailable) as caught:
            await pgbatch.connect_async(dsn, timeout=2).open()
        secret.assert_absent(everything_shown(caught.value))
    secret.assert_absent(all_logs.text)


def test_unparsable_dsn_error_never_quotes_the_password(secret):
    for bad in (
        f"postgresql://u:{quote(secret.password, safe='')}@127.0.0.1:notaport/db",
        f"host=127.0.0.1 port=5432 password='{secret.password}",  # unterminated quote
        f"host=127.0.0.1 password={secrets.token_hex(4)}'unterminated {secret.password}",
    ):
        with pytest.raises(errors.InvalidDSN) as caught:
            pgbatch.connect(bad)
        secret.assert_absent(everything_shown(caught.value))


def test_errors_and_logs_of_a_working_client_never_show_it(secret, schema, all_logs):
    for dsn in secret.dsns():
        # A name of its own: the server is shared, terminate nobody else's connections.
        app_name = f"pgbatch-secrets-{secrets.token_hex(4)}"
        with pgbatch.connect(dsn, schema=schema, max_size=2, application_name=app_name) as client:
            queue = client.create_queue("jobs")
            queue.enqueue({"x": 1})
            # A statement PostgreSQL refuses, and a pool connection killed under the client.
            with client.db.connection() as conn, pytest.raises(psycopg.Error) as refused:
                conn.execute("SELECT 1/0")
            translated = pgbatch.db.translate(refused.value, client.db.target)
            secret.assert_absent(everything_shown(translated))
            with psycopg.connect(dsn, autocommit=True) as admin:
                killed = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (app_name,),
                ).fetchone()
                assert killed is not None and killed[0] >= 1
            for _ in range(3):  # the pool finds the dead connections and replaces them
                try:
                    queue.stats()
                except errors.DatabaseError as exc:
                    secret.assert_absent(everything_shown(exc))
            assert queue.stats().ready == 1
            queue.purge()
        with pgbatch.connect(dsn, schema="no_such_schema_here") as client:
            with pytest.raises(errors.DatabaseError) as caught:
                client.queue("jobs")
            secret.assert_absent(everything_shown(caught.value))
    assert all_logs.records, "nothing was logged: the log check would prove nothing"
    secret.assert_absent(all_logs.text)


def run_worker_whose_connections_die(dsn: str, schema: str) -> pgbatch.WorkerReport:
    """A drain-mode worker whose pool connections are terminated under its first batch."""
    app_name = f"pgbatch-secrets-{secrets.token_hex(4)}"
    app = pgbatch.App(dsn, schema=schema, application_name=app_name)
    calls: list[int] = []

    @app.batch_handler("jobs", batch_size=5)
    def handle(batch: pgbatch.Batch[Any]) -> None:
        if not calls:
            with psycopg.connect(dsn, autocommit=True) as admin:
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (app_name,),
                )
        calls.append(len(batch))

    with pgbatch.connect(dsn, schema=schema) as client:
        client.create_queue("jobs").batch_enqueue([{"n": n} for n in range(20)])
    return app.run_worker(until_empty=True, install_signal_handlers=False)


def test_worker_logs_and_registry_never_show_it(secret, schema, all_logs):
    for dsn in secret.dsns():
        assert run_worker_whose_connections_die(dsn, schema).archived == 20
    with psycopg.connect(secret.keyword_dsn()) as conn:
        # Each column as its own text: inside row_to_json a backslash of a key=value
        # password would be doubled, and the search would miss it.
        rows = conn.execute(
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(schema, "worker"))
        ).fetchall()
    assert len(rows) == 2
    secret.assert_absent(" ".join(str(value) for row in rows for value in row))
    assert "database error" in all_logs.text  # the terminations were logged...
    secret.assert_absent(all_logs.text)  # ...without the password


def run_cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli_app, list(args))
    return result.exit_code, result.stdout + result.stderr


def test_cli_json_output_and_errors_never_show_it(secret, schema, all_logs):
    for dsn in secret.dsns():
        with pgbatch.connect(dsn, schema=schema) as client:
            client.create_queue("jobs").enqueue({"x": 1})
        for command in (["stats"], ["workers"], ["queue", "list"], ["migrate"]):
            code, output = run_cli(*command, "--json", "--dsn", dsn, "--schema", schema)
            assert code == 0, output
            assert output.lstrip().startswith(("{", "["))
            secret.assert_absent(output)
        for unreachable in secret.dsns(port=1):
            code, output = run_cli("stats", "--json", "--dsn", unreachable)
            assert code == 1
            assert "127.0.0.1:1" in output
            secret.assert_absent(output)
    secret.assert_absent(all_logs.text)


def test_cli_debug_traceback_never_shows_it(secret):
    """--debug prints the whole traceback: a real process, as a user would see it."""
    for unreachable in secret.dsns(port=1):
        done = subprocess.run(
            [sys.executable, "-m", "pgbatch.cli", "stats", "--json", "--debug"],
            env={**os.environ, "PGBATCH_DSN": unreachable},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode != 0
        assert "Traceback" in done.stderr and "127.0.0.1:1" in done.stderr
        secret.assert_absent(done.stdout + done.stderr)
