"""``pgbatch demo``: the main job, measured. Batches against one message per transaction.

First N messages are enqueued with batch_enqueue (COPY, 1,000 per transaction) and drained
by an App's batch handler in this process (``run_worker(until_empty=True)``). Then the same
work one message per transaction: enqueue one, dequeue_many(1), archive_many one. That path is
slow, so it runs on at most --single-limit messages, time-boxed, and its times are
extrapolated to N (the table says so). Both rates and the speed-up are printed, as the seeds'
benchmarks do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import pgbatch
from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import DEFAULT_SCHEMA, DebugOption, DsnOption, JsonOption, SchemaOption
from pgbatch.cli.output import count, print_json, stdout_console
from pgbatch.cli.session import open_client
from pgbatch.dsn import describe_dsn

ENQUEUE_CHUNK = 1000


@dataclass(frozen=True, slots=True)
class Phase:
    """``measured`` messages took ``seconds``; ``messages`` is what the row stands for."""

    messages: int
    measured: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.measured / self.seconds if self.seconds > 0 else 0.0

    @property
    def extrapolated_seconds(self) -> float:
        return self.seconds * self.messages / self.measured if self.measured else 0.0


@dataclass(frozen=True, slots=True)
class DemoResult:
    messages: int
    batch_size: int
    batched_enqueue: Phase
    batched_process: Phase
    single_enqueue: Phase
    single_process: Phase


def _payloads(start: int, stop: int) -> list[dict[str, Any]]:
    return [{"user_id": i, "email": f"u{i}@example.com"} for i in range(start, stop)]


@contextmanager
def _status(console: Console, text: str, enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    with console.status(text):
        yield


def run_batched(
    client: pgbatch.Client, queue: str, messages: int, batch_size: int, concurrency: int
) -> tuple[Phase, Phase]:
    """batch_enqueue in chunks of 1,000, then drain with a no-op batch handler."""
    target = client.queue(queue)
    archived_before = target.stats().archived
    payloads = _payloads(0, messages)
    started = time.perf_counter()
    for start in range(0, messages, ENQUEUE_CHUNK):
        target.batch_enqueue(payloads[start : start + ENQUEUE_CHUNK])
    enqueued = time.perf_counter() - started

    app = pgbatch.App(client.dsn, schema=client.schema)

    @app.batch_handler(queue, batch_size=batch_size)
    def handle(batch: Any) -> None:
        """Does nothing: every message of the batch is archived when it returns."""

    started = time.perf_counter()
    app.run_worker(queues=[queue], concurrency=concurrency, until_empty=True)
    processed = time.perf_counter() - started
    _check_drained(target, archived_before, messages)
    return Phase(messages, messages, enqueued), Phase(messages, messages, processed)


def run_single(
    client: pgbatch.Client, queue: str, messages: int, limit: int, budget: float
) -> tuple[Phase, Phase]:
    """The same work one message per transaction, on at most ``limit`` messages and for at
    most ``budget`` seconds per step (what is left undone is purged)."""
    target = client.queue(queue)
    enqueued = 0
    started = time.perf_counter()
    for payload in _payloads(messages, messages + min(messages, limit)):
        target.enqueue(payload)
        enqueued += 1
        if time.perf_counter() - started > budget:
            break
    enqueue_seconds = time.perf_counter() - started
    processed = 0
    started = time.perf_counter()
    while processed < enqueued and time.perf_counter() - started <= budget:
        taken = target.dequeue_many(1)
        if not taken:
            break
        processed += len(target.archive_many(taken))
    process_seconds = time.perf_counter() - started
    target.purge()
    return (
        Phase(messages, enqueued, enqueue_seconds),
        Phase(messages, processed, process_seconds),
    )


def _check_drained(target: pgbatch.Queue[Any], archived_before: int, expected: int) -> None:
    """The demo proves what it measures: every message archived, none left behind."""
    stats = target.stats()
    left = stats.ready + stats.leased + stats.delayed
    archived = stats.archived - archived_before
    if left or archived != expected:
        raise RuntimeError(
            f"the worker archived {archived:,} of {expected:,} messages and left {left:,}"
        )


def render(result: DemoResult) -> Table:
    n = count(result.messages)
    enqueue, process = result.single_enqueue, result.single_process
    note = (
        f"measured on {count(enqueue.measured)} enqueues and {count(process.measured)} "
        f"dequeue + archive, times extrapolated to {n}"
        if min(enqueue.measured, process.measured) < result.messages
        else "measured"
    )
    out = Table(
        title=f"pgbatch demo: {n} messages",
        caption=f"One message per transaction: {note}. Batched drain: batch size "
        f"{result.batch_size}.",
        title_justify="left",
        caption_justify="left",
        header_style="bold",
    )
    for column, justify in (
        ("", "left"),
        ("batched", "right"),
        ("one per transaction", "right"),
        ("speed-up", "right"),
    ):
        out.add_column(column, justify=justify)  # type: ignore[arg-type]
    rows = (
        ("enqueue", result.batched_enqueue, result.single_enqueue),
        ("dequeue + archive", result.batched_process, result.single_process),
    )
    for label, batched, one in rows:
        out.add_row(label, _cell(batched), _cell(one), _speedup(batched.rate, one.rate))
    total_b = _total(result.batched_enqueue, result.batched_process)
    total_s = _total(result.single_enqueue, result.single_process)
    out.add_row(
        "end to end",
        _cell(total_b),
        _cell(total_s),
        _speedup(total_b.rate, total_s.rate),
        style="bold",
    )
    return out


def _total(enqueue: Phase, process: Phase) -> Phase:
    seconds = enqueue.extrapolated_seconds + process.extrapolated_seconds
    return Phase(enqueue.messages, enqueue.messages, seconds)


def _cell(phase: Phase) -> str:
    return f"{phase.rate:,.0f} msg/s ({phase.extrapolated_seconds:,.2f} s)"


def _speedup(batched_rate: float, single_rate: float) -> str:
    return f"{batched_rate / single_rate:,.1f}x" if single_rate > 0 else "-"


@friendly_errors
def demo(
    messages: Annotated[
        int, typer.Option("--messages", "-n", min=1, help="Messages to move through the queue.")
    ] = 100_000,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Batch size of the demo's handler.")
    ] = 100,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, help="Batches in flight in the worker.")
    ] = 4,
    single_limit: Annotated[
        int,
        typer.Option(
            "--single-limit",
            min=1,
            help="Run the one-per-transaction comparison on at most this many messages "
            "(and extrapolate).",
        ),
    ] = 10_000,
    single_seconds: Annotated[
        float,
        typer.Option(
            "--single-seconds",
            min=0.1,
            help="Time box of each one-per-transaction step, in seconds (then extrapolate).",
        ),
    ] = 10.0,
    queue: Annotated[
        str, typer.Option("--queue", help="The demo's queue (emptied first, dropped after).")
    ] = "pgbatch-demo",
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the demo queue and its archive afterwards.")
    ] = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Move messages through a queue in batches, then one per transaction, and compare.

    Runs on the embedded PostgreSQL unless --dsn (or $PGBATCH_DSN / $DATABASE_URL) says
    otherwise: nothing to set up. Enqueues --messages with batch_enqueue, drains them with a
    batch handler, then does the same one message per transaction (on at most --single-limit
    messages and --single-seconds per step, extrapolated), and prints both rates with the
    speed-up.

    **Examples**

        pgbatch demo
        pgbatch demo --messages 1000000 --batch-size 1000
        pgbatch demo --dsn postgresql://postgres@localhost:5432/postgres --json
    """
    console = stdout_console()
    interactive = console.is_terminal and not json_output
    with open_client(dsn, schema, max_size=8) as client:
        if not json_output:
            console.print(
                f"pgbatch demo on {describe_dsn(client.dsn)} (schema {schema!r}), queue {queue!r}",
                markup=False,
            )
        client.create_queue(queue).purge()
        try:
            with _status(console, f"batched: {count(messages)} messages…", interactive):
                b_enqueue, b_process = run_batched(client, queue, messages, batch_size, concurrency)
            with _status(console, "one message per transaction…", interactive):
                s_enqueue, s_process = run_single(
                    client, queue, messages, single_limit, single_seconds
                )
        finally:
            if not keep:
                client.drop_queue(queue)
    result = DemoResult(messages, batch_size, b_enqueue, b_process, s_enqueue, s_process)
    if json_output:
        print_json(_as_json(result))
    else:
        console.print(render(result))


def _as_json(result: DemoResult) -> dict[str, Any]:
    def phase(p: Phase) -> dict[str, Any]:
        return {"measured": p.measured, "seconds": round(p.seconds, 6), "rate": round(p.rate, 1)}

    return {
        "messages": result.messages,
        "batch_size": result.batch_size,
        "batched": {
            "enqueue": phase(result.batched_enqueue),
            "process": phase(result.batched_process),
        },
        "one_per_transaction": {
            "enqueue": phase(result.single_enqueue),
            "process": phase(result.single_process),
        },
        "speedup": {
            "enqueue": result.batched_enqueue.rate / result.single_enqueue.rate,
            "process": result.batched_process.rate / result.single_process.rate,
        },
    }
