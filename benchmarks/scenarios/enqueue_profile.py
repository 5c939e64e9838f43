"""Where the enqueue path spends its time, and what the alternatives would gain.

pgbatch's operations are sans-IO plans (``pgbatch.operations``): ``batch_enqueue`` yields
its statements and its COPY step. This scenario drives that plan with a small driver of its
own on a plain psycopg connection, so that each part can be timed or swapped:

- build only: the statements run, the COPY data is produced but never sent (the Python
  work: serialisation and COPY text);
- ready-made bytes: the same statements and COPY, with bytes built beforehand (what
  PostgreSQL, libpq and the network cost with no Python work in the loop);
- ways to send the COPY data while it is built: a plain ``copy.write`` per chunk (the
  socket buffer lets client and server overlap), psycopg's ``QueuedLibpqWriter`` (a writer
  thread, what pgbatch.db uses at the time of writing), one ``write`` per batch;
- changes to the plan: ids drawn in blocks of 1,000 (one ``nextval`` per batch instead of
  one per message); no explicit transaction (a COPY alone is atomic; the wake-up NOTIFY
  then follows it in its own statement); and COPY alone, with ids from a reservoir the
  client holds and the wake-up sent by a statement-level trigger (plain, or naming the
  queues from a transition table);
- the public ``Queue.batch_enqueue``, a cProfile of it, and limit (a) in the same round:
  each way of enqueueing is compared with it (the share of its throughput).
"""

from __future__ import annotations

import cProfile
import itertools
import math
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
ID_BLOCK = 1000
RESERVOIR_START = 10**12  # far above what the schema's own sequence hands out
Sender = Callable[[psycopg.Cursor[Any], str, Iterable[bytes]], None]


def send_chunks(cur: psycopg.Cursor[Any], sql_text: str, data: Iterable[bytes]) -> None:
    with cur.copy(sql_text) as copy:
        for chunk in data:
            copy.write(chunk)


def send_queued(cur: psycopg.Cursor[Any], sql_text: str, data: Iterable[bytes]) -> None:
    with cur.copy(sql_text, writer=QueuedLibpqWriter(cur)) as copy:
        for chunk in data:
            copy.write(chunk)


def send_one_write(cur: psycopg.Cursor[Any], sql_text: str, data: Iterable[bytes]) -> None:
    payload = b"".join(data)
    with cur.copy(sql_text) as copy:
        copy.write(payload)


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    send: Sender | None  # None: build the COPY data, send nothing
    replay: bool = False  # send the data built by the build-only variant instead
    ids: str = "statement"  # the plan's statement, "blocks", or a client-side "reservoir"
    transaction: bool = True
    notify_step: bool = True  # False: the plan's NOTIFY statement is skipped...
    setup: str | None = None  # ...because this helper made the table notify by itself


VARIANTS = (
    Variant("build only (statements run, COPY data not sent)", None),
    Variant("ready-made bytes (statements + COPY, no Python work)", send_chunks, replay=True),
    Variant("send while building: plain copy.write per chunk", send_chunks),
    Variant("send while building: QueuedLibpqWriter (writer thread)", send_queued),
    Variant("send while building: one copy.write per batch", send_one_write),
    Variant("plain writes + ids in blocks of 1,000", send_chunks, ids="blocks"),
    Variant(
        "plain writes + id blocks + no BEGIN/COMMIT", send_chunks, ids="blocks", transaction=False
    ),
    Variant(
        "COPY alone: plain writes, id reservoir, NOTIFY by statement trigger",
        send_chunks,
        ids="reservoir",
        transaction=False,
        notify_step=False,
        setup="notify_trigger_statement",
    ),
    Variant(
        "the same, trigger naming the queues (transition table)",
        send_chunks,
        ids="reservoir",
        transaction=False,
        notify_step=False,
        setup="notify_trigger_transition",
    ),
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
        self.allocate_sql = client.queries.message_id_allocate
        self.notify_sql = client.queries.notify_queue
        self.block_sql = db.helper("id_block_allocate", client.schema)
        self.reservoir = itertools.count(RESERVOIR_START)

    def run(self, plan: ops.Plan[Any], replay: list[bytes] | None) -> None:
        start = time.perf_counter()
        before = sum(self.timings.steps.values())
        if self.variant.transaction:
            with self.conn.transaction():
                self._drive(plan, replay)
        else:
            self._drive(plan, replay)
        steps = sum(self.timings.steps.values()) - before
        self.timings.add("BEGIN + COMMIT", time.perf_counter() - start - steps)

    def _drive(self, plan: ops.Plan[Any], replay: list[bytes] | None) -> None:
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
            elif step.sql == self.allocate_sql and self.variant.ids != "statement":
                name, rows = self._other_ids(cur, step)
            elif step.sql == self.notify_sql and not self.variant.notify_step:
                return []
            else:
                cur.execute(step.sql, step.params)
                rows = cur.fetchall() if cur.description is not None else []
                name = self.names.get(step.sql, "other statement")
        self.timings.add(name, time.perf_counter() - start)
        return rows

    def _other_ids(
        self, cur: psycopg.Cursor[Any], step: ops.Statement
    ) -> tuple[str, list[ops.Row]]:
        """Ids drawn in blocks (one nextval per 1,000), or from a reservoir the client holds
        (one round trip per many batches in a real client; none here)."""
        count = int((step.params or {})["count"])
        if self.variant.ids == "reservoir":
            return "ids from a client-side reservoir", [
                ([next(self.reservoir) for _ in range(count)],)
            ]
        cur.execute(self.block_sql, {"blocks": math.ceil(count / ID_BLOCK)})
        blocks = cur.fetchall()[0][0]
        ids = [b * ID_BLOCK + i for b in blocks for i in range(ID_BLOCK)][:count]
        return "ids in blocks (one nextval per block)", [(ids,)]

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
                    channel=client.channel,
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
            with db.connect(dsn) as conn:
                conn.execute(db.helper("id_block_sequence_create", schema))
                if variant.setup:
                    conn.execute(db.helper(variant.setup, schema))
            seconds, timings = drive_variant(dsn, schema, batches, variant, built)
        if variant.send is None:
            built = timings.built  # replayed by the next variant
        found.per_message[variant.label] = seconds / count * 1e6
        for name, step_seconds in timings.steps.items():
            # Each step as first met: the build-only run has the plan's own statements.
            if variant.transaction or name != "BEGIN + COMMIT":
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
