"""The App that ``pgbatch worker benchmarks.apps:drain_app`` runs in the drain scenario.

The benchmark's schema comes from ``PGBATCH_BENCH_SCHEMA`` (each run has a fresh one); the
DSN from the command line's ``--dsn``.
"""

from __future__ import annotations

import os
from typing import Any

from benchmarks.database import QUEUE_NAME
from pgbatch.worker import App

drain_app = App(schema=os.environ.get("PGBATCH_BENCH_SCHEMA", "pgbatch"))


@drain_app.batch_handler(QUEUE_NAME, batch_size=100)
def noop(batch: Any) -> None:
    """Does nothing: the drain scenario measures the queue, not a handler."""
