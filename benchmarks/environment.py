"""What a sitting ran on: the machine, the versions, and the server settings that matter."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import database as db
from benchmarks.pgbench import pgbench_version
from pgbatch.dsn import describe_dsn

SERVER_SETTINGS = (
    "shared_buffers",
    "synchronous_commit",
    "fsync",
    "full_page_writes",
    "wal_level",
    "wal_buffers",
    "max_wal_size",
    "checkpoint_timeout",
    "work_mem",
    "max_connections",
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_vacuum_cost_limit",
    "jit",
    "huge_pages",
    "random_page_cost",
)


def _meminfo_mib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "nproc": os.cpu_count(),
        "memory_mib": _meminfo_mib(),
        "cpu": _cpu_model(),
        "kernel": f"{platform.system()} {platform.release()}",
        "load_average_1_5_15": [round(x, 2) for x in load],
    }


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{head}{' (with uncommitted changes)' if dirty.strip() else ''}"


def versions(dsn: str) -> dict[str, Any]:
    return {
        "postgresql": db.scalar(dsn, db.helper("server_version")),
        "python": platform.python_version(),
        "psycopg": psycopg.__version__,
        "libpq": psycopg.pq.version(),
        "psycopg_impl": psycopg.pq.__impl__,
        "psycopg_pool": _version("psycopg-pool"),
        "orjson": _version("orjson"),
        "pgbatch": _version("pgbatch"),
        "pgbench": pgbench_version(),
        "git_commit": _git_commit(),
    }


def server_settings(dsn: str) -> dict[str, str]:
    with db.connect(dsn) as conn:
        rows = conn.execute(db.helper("server_settings"), {"names": list(SERVER_SETTINGS)})
        return {str(name): str(value) for name, value in rows}


def describe(dsn: str) -> dict[str, Any]:
    return {
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "server": describe_dsn(dsn),
        "machine": machine(),
        "versions": versions(dsn),
        "settings": server_settings(dsn),
    }
