"""Where the drain at batch 100 spends CPU: the server's and the consumers', per message.

The drain target (2 worker processes at batch 100 ≥ limit (b) with 2 clients) is decided on
a 2-core machine where the server and the consumers share the cores. This scenario splits
the CPU of both sides of the comparison, in the same rounds:

- limit (b), 2 pgbench clients: the server's CPU per message, pgbench's, and how busy the
  cores were (all CPU spent over wall time * cores);
- the worker runtime, 2 processes at batch 100 (the drain-worker case): the same figures,
  the workers' CPU counted from the start signal (interpreter start-up excluded);
- a floor for the worker: 2 processes of plain psycopg loops (as many connections each as
  the worker has lanes) sending pgbatch's own dequeue and archive statements, pipelined as
  the worker does, with nothing else in Python: what any runtime on psycopg would cost;
- the same loops on limit (e)'s layout (batch leases claimed in commit order), on limit
  (g)'s (packs of 100 messages leased and archived as one row each) and on limit (h)'s
  (packs archived as a row per message): what Python consumers would reach after the
  redesigns docs/packs.md describes.

The server's CPU is read from /proc for every process named ``postgres`` on this host, so
the scenario needs the database on the same machine (it is skipped otherwise), and anything
else PostgreSQL does meanwhile (autovacuum, other sessions) counts too.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks import database as db
from benchmarks.consumers import Consumers
from benchmarks.harness import Comparison, Context, ScenarioResult, log, stopwatch
from benchmarks.pgbench import find_pgbench
from benchmarks.processes import Children
from benchmarks.scenarios import Skip, scenario
from benchmarks.scenarios.drain import WORKER_CONCURRENCY, require_worker_runtime
from benchmarks.scenarios.limit import (
    LEASE_BATCH,
    LEASE_SCRIPT,
    ConsumerWork,
    fill_ordered_layout,
    fill_pack_layout,
)

CLIENTS = 2
_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_seconds() -> float:
    """User + system CPU of every live process named postgres on this host, children of
    theirs that have exited included (a backend that ended is counted by its postmaster)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        name, fields = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :]
        if name.startswith("postgres"):
            # Fields 14-17 of proc(5): utime, stime, cutime, cstime.
            utime, stime, cutime, cstime = (int(v) for v in fields.split()[11:15])
            total += utime + stime + cutime + cstime
    return total / _TICKS


@dataclass(frozen=True, slots=True)
class CpuSplit:
    rate: float  # messages/s
    server_us: float  # server CPU per message, µs
    consumer_us: float  # consumers' CPU per message, µs
    busy: float  # (server + consumer CPU) / (wall time * cores)


def _split(messages: int, rate: float, seconds: float, server: float, consumers: float) -> CpuSplit:
    """``seconds``: the wall time over which the CPU figures were taken."""
    cores = os.cpu_count() or 1
    return CpuSplit(
        rate,
        server / messages * 1e6,
        consumers / messages * 1e6,
        (server + consumers) / (seconds * cores),
    )


def limit_split(dsn: str, messages: int) -> CpuSplit:
    """Limit (b) with CLIENTS pgbench clients, its CPU split."""
    work = ConsumerWork(LEASE_BATCH, CLIENTS, messages)
    with db.fresh_schema(dsn, "profile") as schema:
        queue_id = db.create_bench_queue(dsn, schema)
        db.fill_backlog(dsn, schema, queue_id, work.backlog)
        server, clients = server_cpu_seconds(), os.times()
        with stopwatch() as elapsed:
            rate = work.run(dsn, schema, LEASE_SCRIPT, queue_id)
        server, after = server_cpu_seconds() - server, os.times()
    pgbench = (after.children_user + after.children_system) - (
        clients.children_user + clients.children_system
    )
    # pgbench's rate excludes its connecting; the CPU figures, and so the wall time they are
    # shared over, include it.
    return _split(work.moved, rate, elapsed(), server, pgbench)


def worker_split(dsn: str, messages: int) -> CpuSplit:
    """The worker runtime, CLIENTS processes at batch LEASE_BATCH, its CPU split."""
    consumers = Consumers(
        "worker-drain",
        processes=CLIENTS,
        batch_size=LEASE_BATCH,
        concurrency=WORKER_CONCURRENCY,
    )
    with db.fresh_schema(dsn, "profile") as schema:
        queue_id = db.create_bench_queue(dsn, schema)
        db.fill_backlog(dsn, schema, queue_id, messages, packs=True)
        split = _children_split(dsn, schema, consumers, messages)
        archived = db.count(dsn, schema, "archive")
    if archived != messages:
        raise RuntimeError(f"the workers archived {archived} of {messages}")
    return split


def _children_split(dsn: str, schema: str, consumers: Consumers, messages: int) -> CpuSplit:
    """Runs the consumer processes over the schema's backlog: the CPU split of the run."""
    with Children(consumers.mode, consumers.configs(dsn, schema)) as group:
        server = server_cpu_seconds()
        start = group.go()
        results = group.results()
        server = server_cpu_seconds() - server
    seconds = max(result["end"] for result in results) - start
    return _split(
        messages,
        messages / seconds,
        seconds,
        server,
        sum(result["cpu_seconds"] for result in results),
    )


def _psycopg_consumers(layout: str, queue_id: int) -> Consumers:
    return Consumers(
        "psycopg-drain",
        processes=CLIENTS,
        batch_size=LEASE_BATCH,
        concurrency=WORKER_CONCURRENCY,
        extra={"layout": layout, "queue_id": queue_id},
    )


def floor_split(dsn: str, messages: int) -> CpuSplit:
    """pgbatch's statements from plain psycopg loops, CLIENTS processes: the CPU split."""
    with db.fresh_schema(dsn, "profile") as schema:
        queue_id = db.create_bench_queue(dsn, schema)
        db.fill_backlog(dsn, schema, queue_id, messages)
        split = _children_split(dsn, schema, _psycopg_consumers("pgbatch", queue_id), messages)
        archived = db.count(dsn, schema, "archive")
    if archived != messages:
        raise RuntimeError(f"the psycopg loops archived {archived} of {messages}")
    return split


def ordered_split(dsn: str, messages: int) -> CpuSplit:
    """Limit (e)'s layout drained by plain psycopg loops, CLIENTS processes: the CPU split."""
    with db.fresh_schema(dsn, "profile") as schema, db.connect(dsn) as conn:
        queue_id = fill_ordered_layout(conn, dsn, schema, messages)
        conn.execute(db.helper("ordered_layout_cursor_create", schema), {"queue_id": queue_id})
        conn.execute(db.helper("ordered_layout_vacuum", schema))
        split = _children_split(dsn, schema, _psycopg_consumers("ordered", queue_id), messages)
        done = int(db.scalar(dsn, db.helper("ordered_layout_done_count", schema)))
    if done != messages:
        raise RuntimeError(f"the psycopg loops completed {done} of {messages} on layout (e)")
    return split


def packs_split(dsn: str, messages: int, layout: str = "packs") -> CpuSplit:
    """Limit (g)'s layout drained by plain psycopg loops, CLIENTS processes: the CPU split.
    With ``layout`` "packs-archived", limit (h)'s (an archive row per message)."""
    with db.fresh_schema(dsn, "profile") as schema, db.connect(dsn) as conn:
        queue_id = fill_pack_layout(conn, dsn, schema, messages, LEASE_BATCH)
        conn.execute(db.helper("pack_layout_vacuum", schema))
        split = _children_split(dsn, schema, _psycopg_consumers(layout, queue_id), messages)
        done = (
            db.count(dsn, schema, "archive")
            if layout == "packs-archived"
            else int(db.scalar(dsn, db.helper("pack_layout_done_count", schema)))
        )
    if done != messages:
        raise RuntimeError(f"the psycopg loops archived {done} of {messages} on {layout}")
    return split


def packs_archived_split(dsn: str, messages: int) -> CpuSplit:
    return packs_split(dsn, messages, "packs-archived")


def _require_local_server(dsn: str) -> None:
    if server_cpu_seconds() == 0.0:
        raise Skip("no PostgreSQL process on this host: the server's CPU cannot be read")
    if find_pgbench() is None:
        raise Skip("pgbench not found: no limit (b) to compare with")


SIDES = {
    "limit": f"PostgreSQL alone (limit (b), {CLIENTS} clients)",
    "worker": f"worker, batch {LEASE_BATCH}, {CLIENTS} processes",
    "floor": f"psycopg loops on pgbatch's per-message statements, {CLIENTS} processes",
    "ordered": f"psycopg loops on limit (e)'s layout, {CLIENTS} processes",
    "packs": f"psycopg loops on limit (g)'s packs, {CLIENTS} processes",
    "packs_archived": f"psycopg loops on limit (h)'s packs, {CLIENTS} processes",
}
MEASURES: dict[str, Callable[[str, int], CpuSplit]] = {
    "limit": limit_split,
    "worker": worker_split,
    "floor": floor_split,
    "ordered": ordered_split,
    "packs": packs_split,
    "packs_archived": packs_archived_split,
}


# (key, label, unit, value of a round, higher is better) of each figure recorded per side.
FIGURES: tuple[tuple[str, str, str, Callable[[CpuSplit], float], bool], ...] = (
    ("rate", "throughput", "msg/s", lambda split: split.rate, True),
    ("server", "server CPU", "µs/msg", lambda split: split.server_us, False),
    ("consumer", "consumers' CPU", "µs/msg", lambda split: split.consumer_us, False),
    ("busy", "cores busy", "%", lambda split: 100 * split.busy, True),
)


@scenario("drain-profile", "Where the drain at batch 100 spends CPU (server and consumers)")
def drain_profile(ctx: Context, result: ScenarioResult) -> None:
    require_worker_runtime()
    _require_local_server(ctx.dsn)
    rounds: dict[str, list[CpuSplit]] = {side: [] for side in SIDES}
    for number in range(1, ctx.options.runs + 1):
        for side, measure in MEASURES.items():
            split = measure(ctx.dsn, ctx.sizes.messages)
            rounds[side].append(split)
            log(
                f"[{number}] {SIDES[side]}: {split.rate:,.0f} msg/s, server"
                f" {split.server_us:.1f} µs/msg, consumers {split.consumer_us:.1f} µs/msg,"
                f" cores busy {split.busy:.0%}"
            )
    for side, label in SIDES.items():
        for figure, what, unit, value, higher_is_better in FIGURES:
            ctx.record(
                result,
                f"profile.drain.{side}.{figure}",
                f"{label}: {what}",
                unit,
                [value(split) for split in rounds[side]],
                higher_is_better=higher_is_better,
            )
    result.comparisons += [
        Comparison(
            "server CPU per message, limit (b)'s over the worker's (above 1: less for the worker)",
            "profile.drain.worker.server",
            "profile.drain.limit.server",
        ),
        Comparison(
            "throughput, worker vs limit (b)",
            "profile.drain.worker.rate",
            "profile.drain.limit.rate",
        ),
        Comparison(
            "consumers' CPU per message, the psycopg floor's over the worker's",
            "profile.drain.worker.consumer",
            "profile.drain.floor.consumer",
        ),
        Comparison(
            "throughput, psycopg loops on pgbatch's statements vs limit (b)",
            "profile.drain.floor.rate",
            "profile.drain.limit.rate",
        ),
        Comparison(
            "throughput, psycopg loops on limit (e)'s layout vs limit (b)",
            "profile.drain.ordered.rate",
            "profile.drain.limit.rate",
        ),
        Comparison(
            "throughput, psycopg loops on limit (g)'s packs vs limit (b)",
            "profile.drain.packs.rate",
            "profile.drain.limit.rate",
        ),
        Comparison(
            "throughput, psycopg loops on limit (h)'s packs (archive rows) vs limit (b)",
            "profile.drain.packs_archived.rate",
            "profile.drain.limit.rate",
        ),
    ]
    result.notes.append(
        f"{ctx.sizes.messages:,} ready messages per run on {os.cpu_count()} cores. Server CPU:"
        " every process named postgres on this host, read from /proc; the workers' from the"
        " start signal; pgbench's from its start (it connects first)."
    )
