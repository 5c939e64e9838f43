"""Runs pgbench custom scripts against one benchmark schema: PostgreSQL's own limit.

Scripts live in ``benchmarks/sql/`` and name tables unqualified; the schema reaches them
through ``search_path`` in PGOPTIONS. ``-M prepared`` matches pgbatch, whose psycopg
connections prepare statements they run repeatedly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from glob import glob
from pathlib import Path

from benchmarks.database import SQL_DIR

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


class PgbenchError(RuntimeError):
    """pgbench is missing, or a run failed or did less work than asked."""


def find_pgbench() -> str | None:
    """``$PGBENCH``, pgbench on PATH, or the newest one under /usr/lib/postgresql."""
    explicit = os.environ.get("PGBENCH")
    if explicit:
        return explicit
    on_path = shutil.which("pgbench")
    if on_path:
        return on_path
    found = sorted(glob("/usr/lib/postgresql/*/bin/pgbench"))
    return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class PgbenchRun:
    scripts: int  # script executions (pgbench calls each one a transaction)
    scripts_per_second: float


def run_script(
    dsn: str,
    schema: str,
    script: str,
    *,
    clients: int,
    scripts_per_client: int,
    variables: dict[str, int],
) -> PgbenchRun:
    """Runs ``benchmarks/sql/<script>`` with a fixed amount of work; raises PgbenchError."""
    command, env = _command(
        dsn, schema, script, clients, variables, ["-t", str(scripts_per_client)]
    )
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    return _parse(done, expected=clients * scripts_per_client, script=script)


@dataclass(slots=True)
class Background:
    """A pgbench run started with ``start_script``; ``finish`` waits for it."""

    script: str
    expected: int | None  # script executions asked for, None for a timed run
    process: subprocess.Popen[str]

    def finish(self, timeout: float = 600.0) -> PgbenchRun:
        stdout, stderr = self.process.communicate(timeout=timeout)
        done = subprocess.CompletedProcess(
            self.process.args, self.process.returncode, stdout, stderr
        )
        return _parse(done, expected=self.expected, script=self.script)


def start_script(
    dsn: str,
    schema: str,
    script: str,
    *,
    clients: int,
    variables: dict[str, int],
    scripts_per_client: int | None = None,
    seconds: int | None = None,
    rate: float | None = None,
) -> Background:
    """Starts ``benchmarks/sql/<script>`` in the background: a fixed amount of work or a
    fixed time, at most ``rate`` scripts per second in all if given."""
    limits = ["-t", str(scripts_per_client)] if scripts_per_client else ["-T", str(seconds)]
    if rate is not None:
        limits += ["-R", f"{rate:.3f}"]
    command, env = _command(dsn, schema, script, clients, variables, limits)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    expected = clients * scripts_per_client if scripts_per_client else None
    return Background(script, expected, process)


def _command(
    dsn: str,
    schema: str,
    script: str,
    clients: int,
    variables: dict[str, int],
    limits: list[str],
) -> tuple[list[str], dict[str, str]]:
    binary = find_pgbench()
    if binary is None:
        raise PgbenchError("pgbench not found (set PGBENCH or install postgresql-client)")
    command = [binary, "-n", "-M", "prepared", "-f", str(SQL_DIR / script)]
    command += ["-c", str(clients), "-j", str(clients), *limits]
    for name, value in variables.items():
        command += ["-D", f"{name}={value}"]
    command.append(dsn)  # pgbench expands a connection string given as the database name
    return command, {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}


def _parse(
    done: subprocess.CompletedProcess[str], *, expected: int | None, script: str
) -> PgbenchRun:
    tps, processed = _TPS.search(done.stdout), _PROCESSED.search(done.stdout)
    failed = _FAILED.search(done.stdout)
    if done.returncode != 0 or tps is None or processed is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PgbenchError(f"pgbench {script} failed (exit {done.returncode}): {' | '.join(tail)}")
    short = expected is not None and int(processed[1]) != expected
    if short or (failed is not None and int(failed[1]) != 0):
        raise PgbenchError(
            f"pgbench {script} processed {processed[1]} of {expected or 'its'} scripts"
            f" ({failed[1] if failed else 0} failed)"
        )
    return PgbenchRun(int(processed[1]), float(tps[1]))


def pgbench_version() -> str | None:
    binary = find_pgbench()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def script_path(script: str) -> Path:
    return SQL_DIR / script
