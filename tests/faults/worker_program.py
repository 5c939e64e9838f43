"""The worker program of the fault-injection suite: a real pgbatch App in a real process.

Configured by a JSON object in ``PGBATCH_FAULT_CONFIG`` (read at import, so the same module
works as ``python -m tests.faults.worker_program``, as the supervisor's
``tests.faults.worker_program:app``, and as ``... worker_program supervise N``, which runs the
real supervisor over N children). Keys (all but dsn, schema and queue optional):

    dsn, schema, queue, application_name, pool_size, batch_size, lease_seconds,
    max_attempts, concurrency, until_empty, shutdown_grace
    mode:       "record"         one ``effect`` row per message, on a connection of its own,
                                 then the handler's sleep; every message succeeds
                "transactional"  the same rows written through batch.conn (exactly once)
                "async_transactional"  the same from an async handler (the async pool's conn)
                "exit"           record, then os._exit(3): the process dies in the handler
                "hostile"        fail, complete and raise with texts PostgreSQL cannot store
    sleep:      [low, high] seconds the handler sleeps per batch (uniformly drawn)
    exit_on:    with mode "exit", only payloads whose "poison" is true kill the process

Logs go to stderr at INFO (DEBUG with ``"debug": true``): the tests read them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sys
import time
from typing import Any

import psycopg_pool
from psycopg import sql

import pgbatch
from pgbatch.worker import Batch
from tests.faults.conservation import EFFECT_TABLE

CONFIG_ENV = "PGBATCH_FAULT_CONFIG"
HOSTILE_TEXT = "bad\x00text \ud800 " + "x" * 40_000


def load_config() -> dict[str, Any]:
    raw = os.environ.get(CONFIG_ENV)
    return json.loads(raw) if raw else {}


config = load_config()


def effect_statement(schema: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (message_id, attempt, pid)"
        " SELECT id, attempt, %s FROM unnest(%s::bigint[], %s::int[]) AS e(id, attempt)"
    ).format(sql.Identifier(schema, EFFECT_TABLE))


class Handlers:
    """The handler of each mode, over one queue."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.insert = effect_statement(cfg["schema"])
        self.pool: psycopg_pool.ConnectionPool[Any] | None = None

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def effects_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        # Its own connections (and name): the worker's pool is what the tests starve or kill.
        if self.pool is None:
            self.pool = psycopg_pool.ConnectionPool(
                self.cfg["dsn"],
                min_size=1,
                max_size=4,
                kwargs={"autocommit": True, "application_name": "pgbatch-fault-effects"},
                open=True,
            )
        return self.pool

    def record(self, batch: Batch[Any], conn: Any = None) -> None:
        params = (os.getpid(), [m.id for m in batch], [m.attempts for m in batch])
        if conn is not None:
            conn.execute(self.insert, params)
            return
        with self.effects_pool().connection() as own:
            own.execute(self.insert, params)

    def nap(self) -> None:
        low, high = self.cfg.get("sleep", [0.0, 0.0])
        if high > 0:
            time.sleep(random.uniform(low, high))

    def handle(self, batch: Batch[Any]) -> None:
        mode = self.cfg.get("mode", "record")
        if mode == "transactional":
            self.record(batch, batch.conn)
            self.nap()
            return
        self.record(batch)
        if mode == "exit" and (
            not self.cfg.get("exit_on") or any(m.payload.get("poison") for m in batch)
        ):
            os._exit(3)
        if mode == "hostile":
            self.hostile(batch)
        self.nap()

    async def handle_async(self, batch: Batch[Any]) -> None:
        """mode "async_transactional": the effect rows through the async batch.conn."""
        params = (os.getpid(), [m.id for m in batch], [m.attempts for m in batch])
        assert batch.conn is not None
        await batch.conn.execute(self.insert, params)  # type: ignore[misc]
        low, high = self.cfg.get("sleep", [0.0, 0.0])
        await asyncio.sleep(random.uniform(low, high))

    def hostile(self, batch: Batch[Any]) -> None:
        """Per payload: {"do": "fail" | "complete" | "raise" | "ok"}."""
        for message in batch:
            action = message.payload.get("do")
            if action == "fail":
                batch.fail(message, HOSTILE_TEXT)
            elif action == "complete":
                batch.complete(message, {"text": "nul\x00inside"})
        if any(m.payload.get("do") == "raise" for m in batch):
            raise RuntimeError(HOSTILE_TEXT)


def build_app(cfg: dict[str, Any], handlers: Handlers) -> pgbatch.App:
    app = pgbatch.App(
        cfg["dsn"],
        schema=cfg["schema"],
        pool_size=cfg.get("pool_size"),
        application_name=cfg.get("application_name", "pgbatch-fault-worker"),
    )
    app.batch_handler(
        cfg["queue"],
        batch_size=cfg.get("batch_size", 50),
        lease_seconds=cfg.get("lease_seconds"),
        max_attempts=cfg.get("max_attempts"),
        transactional=cfg.get("mode") in ("transactional", "async_transactional"),
    )(handlers.handle_async if cfg.get("mode") == "async_transactional" else handlers.handle)
    return app


handlers = Handlers(config) if config else None
app = build_app(config, handlers) if handlers else pgbatch.App()


def supervise(processes: int) -> int:
    """The real supervisor over this module's app, as ``pgbatch worker`` would run it."""
    from pgbatch.worker.supervisor import run_supervisor

    return run_supervisor(
        "tests.faults.worker_program:app",
        processes=processes,
        concurrency=config.get("concurrency", 1),
    )


def main() -> None:
    logging.basicConfig(
        level=logging.DEBUG if config.get("debug") else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    try:
        report = app.run_worker(
            concurrency=config.get("concurrency", 2),
            until_empty=config.get("until_empty", False),
            shutdown_grace=config.get("shutdown_grace", 10.0),
        )
    finally:
        if handlers is not None:
            handlers.close()
    print(json.dumps({"archived": report.archived, "lease_losses": report.lease_losses}))


if __name__ == "__main__":
    if sys.argv[1:2] == ["supervise"]:
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        sys.exit(supervise(int(sys.argv[2])))
    main()
