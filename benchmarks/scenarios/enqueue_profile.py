"""Where the enqueue path spends its time, and what the alternatives would gain.

pgbatch's operations are sans-IO plans (``pgbatch.operations``): ``batch_enqueue`` yields
its id reservation (only when the client's reservoir runs short) and its COPY step, run
without an explicit transaction (a COPY alone is atomic; workers are woken by the table's
statement trigger). This scenario drives that plan with a small driver of its own on a
plain psycopg connection, so that each part can be timed or swapped:

- build only: the statements run, the COPY data is produced but never sent (the Python
  work: serialisation and COPY text);
- ready-made bytes: the same statements and COPY, with bytes built beforehand (what
  PostgreSQL, libpq and the network cost with no Python work in the loop);
- ways to send the COPY data while it is built: a plain ``copy.write`` per chunk (the
  socket buffer lets client and server overlap; what pgbatch.db does), psycopg's
  ``QueuedLibpqWriter`` (a writer thread), one ``write`` per batch;
- the public ``Queue.batch_enqueue``, a cProfile of it, and limit (a) in the same round:
  each way of enqueueing is compared with it (the share of its throughput).

Ids in blocks, no BEGIN/COMMIT and the trigger's NOTIFY were alternatives measured here
before migration 0003 made them pgbatch's own path (see BENCHMARKS.md).
"""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.copy import QueuedLibpqWriter

import pgbatch
from benchmarks import database as db
from benchmarks.harness import Comparison, Context, ScenarioResult, log
from benchmarks.pgbench import find_pgbench
from benchmarks.scenarios import scenario
from benchmarks.scenarios.enqueue import chunks, enqueue_all, user_payloads
from benchmarks.scenarios.limit import insert_rate
from pgbatch import operations as ops
from pgbatch.db import configure_adapters

PUBLIC = "Queue.batch_enqueue (public API)"
LIMIT = "PostgreSQL alone: INSERT 1,000 rows/txn (µs per row)"
ENQUEUE_TARGET = 0.8
Sender = Callable[[psycopg.Cursor[Any], bytes, Iterable[bytes]], None]


def send_chunks(cur: psycopg.Cursor[Any], sql_text: bytes, data: Iterable[bytes]) -> None:
    with cur.copy(sql_text) as copy:
        for chunk in data:
            copy.write(chunk)


def send_queued(cur: psycopg.Cursor[Any], sql_text: bytes, data: Iterable[bytes]) -> None:
    with cur.copy(sql_text, writer=QueuedLibpqWriter(cur)) as copy:
        for chunk in data:
            copy.write(chunk)


def send_one_write(cur: psycopg.Cursor[Any], sql_text: bytes, data: Iterable[bytes]) -> None:
    payload = b"".join(data)
    with cur.copy(sql_text) as copy:
        copy.write(payload)


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    send: Sender | None  # None: build the COPY data, send nothing
    replay: bool = False  # send the data built by the build-only variant instead


VARIANTS = (
    Variant("build only (statements run, COPY data not sent)", None),
    Variant("ready-made bytes (statements + COPY, no Python work)", send_chunks, replay=True),
    Variant("send while building: plain copy.write per chunk", send_chunks),
    Variant("send while building: QueuedLibpqWriter (writer thread)", send_queued),
    Variant("send while building: one copy.write per batch", send_one_write),
)


@dataclass(slots=True)
class Timings:
    """Seconds per kind of step, and the COPY data kept by a build-only run."""

    steps: dict[str, float] = field(default_factory=dict)
    built: list[list[bytes]] = field(default_factory=list)

    def add(self, name: str, seconds: float) -> None:
        self.steps[name] = self.steps.get(name, 0.0) + seconds


class PlanDriver:
    """Runs plans as pgbatch.db.run_plan does, timing each step by its query name."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        client: pgbatch.Client,
        variant: Variant,
        timings: Timings,
    ) -> None:
        self.conn, self.variant, self.timings = conn, variant, timings
        self.names = {getattr(client.queries, n): n for n in client.queries.names()}

    def run(self, plan: ops.Plan[Any], replay: list[bytes] | None) -> None:
        rows: list[ops.Row] | None = None
        try:
            while True:
                step = next(plan) if rows is None else plan.send(rows)
                rows = self._step(step, replay)
        except StopIteration:
            pass

    def _step(self, step: ops.Step, replay: list[bytes] | None) -> list[ops.Row]:
        start = time.perf_counter()
        with self.conn.cursor() as cur:
            if isinstance(step, ops.CopyIn):
                name = self._copy(cur, step, replay)
                rows: list[ops.Row] = []
            else:
                cur.execute(step.sql, step.params)
                rows = cur.fetchall() if cur.description is not None else []
                name = self.names.get(step.sql, "other statement")
        self.timings.add(name, time.perf_counter() - start)
        return rows

    def _copy(self, cur: psycopg.Cursor[Any], step: ops.CopyIn, replay: list[bytes] | None) -> str:
        if self.variant.send is None:
            self.timings.built.append(list(step.data))
            return "build COPY data (serialise + COPY text)"
        self.variant.send(cur, step.sql, replay if replay is not None else step.data)
        return "COPY of ready-made bytes" if replay is not None else "COPY"


def drive_variant(
    dsn: str,
    schema: str,
    batches: list[list[Any]],
    variant: Variant,
    built: list[list[bytes]] | None = None,
) -> tuple[float, Timings]:
    """Seconds to drive every batch's plan as ``variant`` says, with the step timings."""
    timings = Timings()
    with pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client:
        queue = client.queue(db.QUEUE_NAME)
        with psycopg.connect(dsn, autocommit=True) as conn:
            configure_adapters(conn)
            driver = PlanDriver(conn, client, variant, timings)
            start = time.perf_counter()
            for index, batch in enumerate(batches):
                plan = ops.batch_enqueue(
                    client.queries,
                    queue.info,
                    batch,
                    model=None,
                    delay=None,
                    priority=0,
                    dedup_keys=None,
                    reservoir=client.ids,
                )
                driver.run(plan, built[index] if variant.replay and built else None)
            return time.perf_counter() - start, timings


@dataclass(slots=True)
class ProfileRound:
    """One round: µs per message for each variant, and for each kind of step."""

    per_message: dict[str, float] = field(default_factory=dict)
    steps: dict[str, float] = field(default_factory=dict)


def profile_round(dsn: str, count: int, batch_size: int) -> ProfileRound:
    batches = chunks(user_payloads(count), batch_size)
    found = ProfileRound()
    built: list[list[bytes]] = []
    for variant in VARIANTS:
        with db.fresh_schema(dsn, "profile") as schema:
            db.create_bench_queue(dsn, schema)
            seconds, timings = drive_variant(dsn, schema, batches, variant, built)
        if variant.send is None:
            built = timings.built  # replayed by the next variant
        found.per_message[variant.label] = seconds / count * 1e6
        for name, step_seconds in timings.steps.items():
            # Each step as first met: the build-only run has the plan's own statements.
            found.steps.setdefault(name, step_seconds / count * 1e6)
    found.per_message[PUBLIC] = _public_seconds(dsn, batches) / count * 1e6
    if find_pgbench() is not None:
        rate = insert_rate(dsn, rows_per_transaction=batch_size, transactions=len(batches))
        found.per_message[LIMIT] = 1e6 / rate
    return found


def _public_seconds(dsn: str, batches: list[list[Any]]) -> float:
    with (
        db.fresh_schema(dsn, "profile") as schema,
        pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client,
    ):
        return enqueue_all(client.create_queue(db.QUEUE_NAME), batches)


def cprofile_table(dsn: str, count: int, batch_size: int, top: int = 12) -> list[list[Any]]:
    """The functions where batch_enqueue spends its own time (cProfile, tottime)."""
    batches = chunks(user_payloads(count), batch_size)
    profiler = cProfile.Profile()
    with (
        db.fresh_schema(dsn, "profile") as schema,
        pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client,
    ):
        queue = client.create_queue(db.QUEUE_NAME)
        profiler.enable()
        enqueue_all(queue, batches)
        profiler.disable()
    entries = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in entries.values())
    rows = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [
        [
            f"{_short(file)}:{line}({function})",
            calls,
            f"{own * 1e6 / count:.2f}",
            f"{own / total:.0%}",
        ]
        for (file, line, function), (_, calls, own, _, _) in rows
    ]


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    for package in ("pgbatch", "benchmarks"):
        marker = f"/{package}/"
        if marker in path:
            return package + "/" + path.split(marker, 1)[1]
    return path


@scenario("enqueue-profile", "Profile of the enqueue path (µs per message)")
def enqueue_profile(ctx: Context, result: ScenarioResult) -> None:
    count, batch = ctx.sizes.messages, ctx.sizes.enqueue_batch
    rounds = []
    for number in range(1, ctx.options.runs + 1):
        rounds.append(profile_round(ctx.dsn, count, batch))
        log(f"[{number}] batch_enqueue: {rounds[-1].per_message[PUBLIC]:.2f} µs/msg")
    keys = {label: f"profile.{index}" for index, label in enumerate(rounds[0].per_message)}
    for label, key in keys.items():
        values = [r.per_message[label] for r in rounds]
        ctx.record(result, key, label, "µs/msg", values, higher_is_better=False)
    if LIMIT in keys:
        # The share of the limit's throughput each way of enqueueing reaches (target 0.8).
        result.comparisons += [
            Comparison(label, keys[label], keys[LIMIT], ENQUEUE_TARGET)
            for label in keys
            if label not in (LIMIT, VARIANTS[0].label)
        ]
    result.details["tables"] = [
        {
            "title": "Enqueue: cost of each step, µs per message (median of rounds)",
            "columns": ["step", "µs/msg"],
            "rows": _median_steps(rounds),
        },
        {
            "title": "Enqueue: cProfile of Queue.batch_enqueue, own time per function",
            "columns": ["function", "calls", "µs/msg", "share"],
            "rows": cprofile_table(ctx.dsn, count, batch),
        },
    ]
    result.notes.append(
        f"{count:,} messages in batches of {batch:,}; each variant in a fresh"
        " schema. cProfile's own overhead inflates its absolute figures."
    )


def _median_steps(rounds: list[ProfileRound]) -> list[list[Any]]:
    rows = []
    for name in rounds[0].steps:
        values = [r.steps[name] for r in rounds if name in r.steps]
        rows.append([name, f"{statistics.median(values):.2f}"])
    return rows
