"""A benchmark consumer process: ``python -m benchmarks.child MODE`` (see processes.py).

Modes:
- ``core-drain``: a loop of ``dequeue_many`` + ``archive_many`` until the queue is empty.
- ``worker-drain``: ``App.run_worker(until_empty=True)``.
- ``worker-serve``: ``App.run_worker()``, idle until messages come, until SIGTERM.
- ``psycopg-drain``: no pgbatch runtime, a floor for it: ``concurrency`` psycopg async
  connections, each pipelining the settle of its last batch with the claim of the next. The
  ``layout`` is ``pgbatch`` (pgbatch's own dequeue and archive statements, rows loaded and
  nothing more), ``ordered`` (limit (e)'s batch leases claimed in commit order), ``packs``
  (limit (g): a pack of messages leased and archived as one row, its payloads decoded) or
  ``packs-archived`` (limit (h): the same, archived as a row per message). With
  ``until`` (ordered only), an empty claim polls until that many messages are settled.

The worker modes take a handler from the config: ``noop`` (sync, so run in a thread) or
``noop_async`` (on the event loop); ``slow`` (async, awaits a call
of ``call_seconds`` per message, gathered); ``record`` (async, notes when it starts on each
message, reported as ``started``: [[id, unix time], ...]); ``create_users`` (async,
transactional: inserts its batch's users with one statement, each user id as the result).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgbatch

Config = dict[str, Any]
# How long a psycopg-drain lane with ``until`` waits after an empty claim.
IDLE_POLL_SECONDS = 0.002
# Set when the start signal comes: _finish reports the CPU this process used since.
_CPU_AT_GO = 0.0


def _status_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status (VmRSS now, VmHWM peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _say(payload: str) -> None:
    sys.stdout.write(payload + "\n")
    sys.stdout.flush()


def _ready_then_wait() -> tuple[int, float]:
    """Prints ready, waits for go; the RSS when ready and the start time."""
    rss_ready = _status_kib("VmRSS")
    _say("ready")
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")
    global _CPU_AT_GO
    _CPU_AT_GO = time.process_time()
    return rss_ready, time.time()


def _finish(messages: int, start: float, rss_ready: int, **extra: Any) -> None:
    _say(
        json.dumps(
            {
                "messages": messages,
                "start": start,
                "end": time.time(),
                "rss_ready_kib": rss_ready,
                # Not getrusage's ru_maxrss: on Linux it also counts the parent's memory
                # at the fork that started this process.
                "peak_rss_kib": _status_kib("VmHWM"),
                # This process's CPU from the start signal: what it took from the server.
                "cpu_seconds": time.process_time() - _CPU_AT_GO,
                **extra,
            }
        )
    )


def core_drain(config: Config) -> None:
    with pgbatch.connect(config["dsn"], schema=config["schema"], min_size=1, max_size=1) as client:
        queue = client.queue(config["queue"])
        batch = int(config["batch_size"])
        rss_ready, start = _ready_then_wait()
        archived = 0
        while messages := queue.dequeue_many(batch):
            archived += len(queue.archive_many(messages))
        _finish(archived, start, rss_ready)


@dataclass(frozen=True, slots=True)
class _LaneLayout:
    """What a psycopg-drain lane sends and reads back on one layout."""

    claim: dict[str, Any]  # the claim statement's parameters
    held: Callable[[list[Any]], Any]  # what a claim's rows hold (None: nothing)
    settle: Callable[[Any], dict[str, Any]]  # the settle statement's parameters for it
    settled: Callable[[Any, list[Any]], int]  # messages settled, from it and settle's rows


def _first_row(rows: list[Any]) -> Any:
    return rows[0] if rows else None


def _lane_layout(config: Config) -> _LaneLayout:
    queue_id = config["queue_id"]
    if config["layout"] == "ordered":  # (token, ids, payloads)
        return _LaneLayout(
            {"queue_id": queue_id, "batch": int(config["batch_size"])},
            _first_row,
            lambda held: {"token": held[0]},
            lambda held, _: len(held[1]),
        )
    if config["layout"] in ("packs", "packs-archived"):  # (id, token, payloads)
        return _LaneLayout(
            {"queue_id": queue_id},
            _first_row,
            lambda held: {"id": held[0], "token": held[1]},
            lambda held, _: len(held[2]),
        )
    # pgbatch's statements: a row per message (a row per pack on packs), counted as archived.
    return _LaneLayout(
        {
            "queue_id": queue_id,
            "limit": int(config["batch_size"]),
            "lease_seconds": 30.0,
            "done_channel": "pgbatch_bench_done",
        },
        lambda rows: rows or None,
        lambda held: {
            "ids": [row[0] for row in held],
            "token": held[0][5],
            "queue": config["queue"],
            "done_channel": "pgbatch_bench_done",
        },
        lambda _, archived: len(archived),
    )


async def _psycopg_lane(config: Config, statements: dict[str, bytes]) -> int:
    """Drains with one connection until a claim comes back empty; messages settled."""
    import psycopg

    from pgbatch.db import configure_adapters, returns_rows

    layout = _lane_layout(config)
    settled = 0
    conn = await psycopg.AsyncConnection.connect(config["dsn"], autocommit=True)
    async with conn:
        configure_adapters(conn)
        held: Any = None
        while True:
            async with conn.pipeline():
                settle = None
                if held is not None:
                    settle = conn.cursor()
                    await settle.execute(statements["settle"], layout.settle(held))
                cur = conn.cursor()
                await cur.execute(statements["claim"], layout.claim)
            if settle is not None:
                rows = await settle.fetchall() if returns_rows(settle) else []
                settled += layout.settled(held, rows)
            held = layout.held(await cur.fetchall())
            if held is None:
                if await _more_to_come(conn, config, statements):
                    await asyncio.sleep(IDLE_POLL_SECONDS)
                    continue
                return settled


async def _more_to_come(conn: Any, config: Config, statements: dict[str, bytes]) -> bool:
    """With ``until`` (messages still being produced), whether fewer have been settled."""
    until = config.get("until")
    if until is None:
        return False
    row = await (await conn.execute(statements["done"])).fetchone()
    return int(row[0]) < int(until)


def psycopg_drain(config: Config) -> None:
    from benchmarks.database import helper
    from pgbatch.queries import Queries

    schema = str(config["schema"])
    if config["layout"] == "ordered":
        statements = {
            "claim": helper("ordered_layout_claim", schema),
            "settle": helper("ordered_layout_complete", schema),
            "done": helper("ordered_layout_done_count", schema),
        }
    elif config["layout"] in ("packs", "packs-archived"):
        complete = "_archived" if config["layout"] == "packs-archived" else ""
        statements = {
            "claim": helper("pack_layout_claim", schema),
            "settle": helper(f"pack_layout_complete{complete}", schema),
        }
    else:
        queries = Queries(schema)
        statements = {
            "claim": queries.message_dequeue_many,
            "settle": queries.message_archive_same_lease,
        }
    rss_ready, start = _ready_then_wait()

    async def lanes() -> int:
        drained = await asyncio.gather(
            *(_psycopg_lane(config, statements) for _ in range(int(config["concurrency"])))
        )
        return sum(drained)

    _finish(asyncio.run(lanes()), start, rss_ready)


class Handlers:
    """The benchmark's batch handlers, with what they observed."""

    def __init__(self, config: Config) -> None:
        self.schema = str(config["schema"])
        self.call_seconds = float(config.get("call_seconds", 0.0))
        self.handled = 0
        self.started: list[tuple[int, float]] = []
        self._insert_users: bytes | None = None

    @property
    def insert_users(self) -> bytes:
        if self._insert_users is None:
            from benchmarks.database import helper

            self._insert_users = helper("bench_user_insert_many", self.schema)
        return self._insert_users

    def noop(self, batch: Any) -> None:
        self.handled += len(batch)

    async def noop_async(self, batch: Any) -> None:
        self.handled += len(batch)

    async def slow(self, batch: Any) -> None:
        # Each message needs a call that takes call_seconds; they run concurrently.
        messages = list(batch)
        await asyncio.gather(*(asyncio.sleep(self.call_seconds) for _ in messages))
        self.handled += len(messages)

    async def record(self, batch: Any) -> None:
        now = time.time()  # the same host clock as the producer's commit time
        self.started.extend((message.id, now) for message in batch)
        self.handled += len(batch)

    async def create_users(self, batch: Any) -> None:
        """Transactional: creates the batch's users with one statement, each id its result."""
        messages = list(batch)
        params = {
            "message_ids": [m.id for m in messages],
            "names": [m.payload.get("name", "warm-up") for m in messages],
            "emails": [m.payload.get("email", f"warm-up-{m.id}") for m in messages],
        }
        async with batch.conn.cursor() as cur:
            await cur.execute(self.insert_users, params)
            user_ids = dict(await cur.fetchall())
        for message in messages:
            batch.complete(message, user_ids[message.id])
        self.handled += len(messages)


def _run_worker(config: Config, *, until_empty: bool) -> None:
    from pgbatch.worker import App  # imported here: core-drain does without the runtime

    app = App(config["dsn"], schema=config["schema"])
    handlers = Handlers(config)
    register = app.batch_handler(
        config["queue"],
        batch_size=config["batch_size"],
        transactional=bool(config.get("transactional", False)),
    )
    register(getattr(handlers, config.get("handler", "noop")))
    rss_ready, start = _ready_then_wait()
    # Without until_empty, run_worker returns after SIGTERM (graceful shutdown).
    report = app.run_worker(until_empty=until_empty, concurrency=int(config["concurrency"]))
    _finish(
        handlers.handled,
        start,
        rss_ready,
        archived=report.archived,
        batches=report.batches,
        started=handlers.started,
    )


def worker_drain(config: Config) -> None:
    _run_worker(config, until_empty=True)


def worker_serve(config: Config) -> None:
    _run_worker(config, until_empty=False)


MODES: dict[str, Callable[[Config], None]] = {
    "core-drain": core_drain,
    "worker-drain": worker_drain,
    "worker-serve": worker_serve,
    "psycopg-drain": psycopg_drain,
}


def main() -> None:
    mode = sys.argv[1]
    config = json.loads(sys.stdin.readline())
    MODES[mode](config)


if __name__ == "__main__":
    main()
