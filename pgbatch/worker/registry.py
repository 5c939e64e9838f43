"""The worker table: each worker process records itself, beats, and signs off.

The row says which host and pid, which queues, since when, how much done, and the last
heartbeat (live workers beat every few seconds). It is for people and tools; correctness
never depends on it: a dead worker's messages come back through their leases.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Sequence

from pgbatch import errors
from pgbatch import operations as ops
from pgbatch.db import AsyncDatabase
from pgbatch.queries import Queries
from pgbatch.worker.backoff import jittered
from pgbatch.worker.report import Counters

log = logging.getLogger("pgbatch.worker.registry")

HEARTBEAT_SECONDS = 5.0


def new_identity(queues: Sequence[str]) -> ops.WorkerIdentity:
    """A fresh id per process start (host-pid-random), so a reused pid is a new worker."""
    host = socket.gethostname()
    pid = os.getpid()
    return ops.WorkerIdentity(f"{host}-{pid}-{secrets.token_hex(4)}", host, pid, tuple(queues))


class WorkerRegistry:
    def __init__(
        self, db: AsyncDatabase, queries: Queries, queues: Sequence[str], counters: Counters
    ) -> None:
        self.db = db
        self.queries = queries
        self.counters = counters
        self.identity = new_identity(queues)

    async def beat(self) -> None:
        await self.db.run(
            ops.worker_heartbeat(
                self.queries, self.identity, self.counters.batches, self.counters.messages
            ),
            transaction=False,
        )

    async def run(self) -> None:
        while True:
            await asyncio.sleep(jittered(HEARTBEAT_SECONDS, 0.1))
            try:
                await self.beat()
            except errors.DatabaseError as exc:
                log.warning("worker heartbeat failed (will retry): %s", exc)

    async def sign_off(self) -> None:
        try:
            await asyncio.wait_for(
                self.db.run(
                    ops.worker_stop(
                        self.queries,
                        self.identity.id,
                        self.counters.batches,
                        self.counters.messages,
                    ),
                    transaction=False,
                ),
                timeout=5.0,
            )
        except (errors.DatabaseError, TimeoutError) as exc:
            log.warning("could not record the worker's stop: %s", exc)
