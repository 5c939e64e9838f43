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
    binary = find_pgbench()
    if binary is None:
        raise PgbenchError("pgbench not found (set PGBENCH or install postgresql-client)")
    command = [
        binary,
        "-n",
        "-M",
        "prepared",
        "-f",
        str(SQL_DIR / script),
        "-c",
        str(clients),
        "-j",
        str(clients),
        "-t",
        str(scripts_per_client),
    ]
    for name, value in variables.items():
        command += ["-D", f"{name}={value}"]
    command.append(dsn)  # pgbench expands a connection string given as the database name
    env = {**os.environ, "PGOPTIONS": f"-c search_path={schema}"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    return _parse(done, expected=clients * scripts_per_client, script=script)


def _parse(done: subprocess.CompletedProcess[str], *, expected: int, script: str) -> PgbenchRun:
    tps, processed = _TPS.search(done.stdout), _PROCESSED.search(done.stdout)
    failed = _FAILED.search(done.stdout)
    if done.returncode != 0 or tps is None or processed is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise PgbenchError(f"pgbench {script} failed (exit {done.returncode}): {' | '.join(tail)}")
    if int(processed[1]) != expected or (failed is not None and int(failed[1]) != 0):
        raise PgbenchError(f"pgbench {script} processed {processed[1]} of {expected} scripts")
    return PgbenchRun(int(processed[1]), float(tps[1]))


def pgbench_version() -> str | None:
    binary = find_pgbench()
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def script_path(script: str) -> Path:
    return SQL_DIR / script
