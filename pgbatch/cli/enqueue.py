"""``pgbatch enqueue``: feed a queue from arguments, a JSON Lines file or standard input.

Lines are read and parsed in chunks of --batch-size, each chunk written with one
``batch_enqueue`` (COPY for plain messages). A chunk with a malformed line is not written at
all and the command stops, naming the line, unless --skip-invalid, which writes the valid
lines and lists the bad ones at the end. Either way the summary says exactly what was written.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import IO, Annotated, Any

import orjson
import typer
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

import pgbatch
from pgbatch import errors
from pgbatch.cli.errors import friendly_errors, one_line, report_error
from pgbatch.cli.jsonl import BadLine, Chunk, prefetched, read_chunks
from pgbatch.cli.options import (
    DEFAULT_SCHEMA,
    DURATION_HELP,
    DebugOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    parse_duration,
)
from pgbatch.cli.output import print_json, stderr_console, stdout_console
from pgbatch.cli.session import open_client

_LISTED_BAD_LINES = 50


@dataclass(slots=True)
class Tally:
    """What has been written so far, for the summary and for error messages."""

    enqueued: int = 0
    last_line_written: int = 0
    blank: int = 0
    skipped: list[BadLine] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def written_so_far(self) -> str:
        if not self.enqueued:
            return "nothing was written"
        return f"{self.enqueued:,} messages up to line {self.last_line_written} were written"


@dataclass(frozen=True, slots=True)
class EnqueueOptions:
    delay: timedelta | None
    priority: int
    skip_invalid: bool


@friendly_errors
def enqueue(
    queue: Annotated[
        str, typer.Argument(metavar="QUEUE", help="The queue to feed.", show_default=False)
    ],
    payloads: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PAYLOAD_JSON",
            help="Payloads as JSON, one argument each.",
            show_default=False,
        ),
    ] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            "-f",
            help="A JSON Lines file, one payload per line; '-' for stdin.",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Messages per transaction.")
    ] = 1000,
    delay: Annotated[
        timedelta | None,
        typer.Option(
            "--delay",
            parser=parse_duration,
            metavar="DURATION",
            show_default=False,
            help=f"Make the messages visible only after this long ({DURATION_HELP}).",
        ),
    ] = None,
    dedup_key_field: Annotated[
        str | None,
        typer.Option(
            "--dedup-key-field",
            show_default=False,
            help="Use this payload field as the dedup key: a message whose key is still in "
            "the queue is not enqueued twice.",
        ),
    ] = None,
    priority: Annotated[
        int, typer.Option("--priority", min=-32768, max=32767, help="Higher goes first.")
    ] = 0,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid",
            help="Write the valid lines and list the invalid ones, instead "
            "of stopping at the first batch with an invalid line.",
        ),
    ] = False,
    create: Annotated[
        bool, typer.Option("--create", help="Create the queue if it does not exist.")
    ] = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Enqueue messages: JSON arguments, or a JSON Lines file (or stdin) streamed in batches.

    Each batch of --batch-size lines is written in one transaction. A batch holding a
    malformed line is not written and the command stops there, naming the line (the lines
    before that batch stay written, and the message says up to which line); with
    --skip-invalid the valid lines are written and the invalid ones listed at the end.

    **Examples**

        pgbatch enqueue emails '{"to": "ada@example.org"}' '{"to": "alan@example.org"}'
        pgbatch enqueue emails --file signups.jsonl --batch-size 5000
        zcat events.jsonl.gz | pgbatch enqueue events --file - --skip-invalid
        pgbatch enqueue emails --file orders.jsonl --dedup-key-field order_id --delay 10m
    """
    if payloads and file is not None:
        raise typer.BadParameter("give payloads as arguments or --file, not both")
    if not payloads and file is None:
        raise typer.BadParameter("give payloads as JSON arguments, or --file F.jsonl (- for stdin)")
    lines = _argument_lines(payloads) if payloads else None
    options = EnqueueOptions(delay, priority, skip_invalid)
    # The file first: a wrong path is a usage error before any connection is made.
    with _open_source(file) as (source, total), open_client(dsn, schema) as client:
        target = client.create_queue(queue) if create else client.queue(queue)
        chunks = read_chunks(
            lines if lines is not None else source,
            size=batch_size,
            dedup_key_field=dedup_key_field,
        )
        show_progress = not json_output and lines is None and stderr_console().is_terminal
        tally = Tally()
        with _progress(show_progress, total) as advance, closing(prefetched(chunks)) as ahead:
            try:
                for chunk in ahead:
                    _write_chunk(target, chunk, options, tally)
                    advance(chunk.bytes_read, tally)
            except KeyboardInterrupt:
                report_error(f"interrupted; {tally.written_so_far()}")
                raise typer.Exit(130) from None
    _print_summary(queue, tally, json_output)


def _argument_lines(payloads: list[str]) -> list[bytes]:
    """Payload arguments as lines; a malformed one is a usage error, before anything runs."""
    lines = []
    for position, text in enumerate(payloads, start=1):
        data = text.encode()
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise typer.BadParameter(
                f"payload argument {position} is not JSON ({exc.msg}): {text[:60]!r}"
            ) from None
        lines.append(data)
    return lines


@contextmanager
def _open_source(path: str | None) -> Iterator[tuple[Iterable[bytes], int | None]]:
    """The lines to read and their total size in bytes when known (for the ETA)."""
    if path is None:
        yield [], None
        return
    if path == "-":
        yield typer.get_binary_stream("stdin"), None
        return
    try:
        handle: IO[bytes] = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise typer.BadParameter(f"no such file: {path}") from None
    with handle:
        yield handle, os.fstat(handle.fileno()).st_size


def _write_chunk(
    queue: pgbatch.Queue[Any], chunk: Chunk, options: EnqueueOptions, tally: Tally
) -> None:
    tally.blank += chunk.blank
    if chunk.bad and not options.skip_invalid:
        _stop_at_bad_lines(chunk, tally)
    while chunk.payloads:
        try:
            queue.batch_enqueue(
                chunk.payloads,
                delay=options.delay,
                priority=options.priority,
                dedup_keys=chunk.dedup_keys,
            )
            break
        except errors.PayloadError as exc:
            # Valid JSON the queue refuses (too large, NUL character, fails the model).
            if exc.index is None:
                raise
            chunk.drop(exc.index, one_line(exc).replace(f" at index {exc.index}", ""))
            if not options.skip_invalid:
                _stop_at_bad_lines(chunk, tally)
        except errors.PgBatchError as exc:
            report_error(f"{one_line(exc)}; {tally.written_so_far()}")
            raise typer.Exit(1) from None
    tally.enqueued += len(chunk.payloads)
    tally.last_line_written = chunk.last_line
    tally.skipped.extend(chunk.bad)


def _stop_at_bad_lines(chunk: Chunk, tally: Tally) -> None:
    bad = sorted(chunk.bad, key=lambda b: b.line)
    more = f" (and {len(bad) - 1} more bad lines: {_line_list(bad[1:])})" if len(bad) > 1 else ""
    report_error(
        f"{bad[0]}{more}; its batch (lines {chunk.first_line}-{chunk.last_line}) was not "
        f"written and {tally.written_so_far()}. Fix the line, or pass --skip-invalid"
    )
    raise typer.Exit(1)


def _line_list(bad: list[BadLine]) -> str:
    shown = ", ".join(str(b.line) for b in bad[:10])
    return shown + (", ..." if len(bad) > 10 else "")


@contextmanager
def _progress(enabled: bool, total: int | None) -> Iterator[Any]:
    """A function advance(bytes, tally) that moves a rich progress bar (a no-op when off)."""
    if not enabled:
        yield lambda _bytes, _tally: None
        return
    columns = [
        TextColumn("[bold]enqueue"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[messages]} messages"),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=stderr_console(), transient=False) as progress:
        task: TaskID = progress.add_task("enqueue", total=total, messages="0", rate="")

        def advance(read: int, tally: Tally) -> None:
            seconds = tally.seconds()
            rate = f"{tally.enqueued / seconds:,.0f} msg/s" if seconds > 0 else ""
            progress.update(task, advance=read, messages=f"{tally.enqueued:,}", rate=rate)

        yield advance


def _print_summary(queue: str, tally: Tally, json_output: bool) -> None:
    seconds = tally.seconds()
    rate = tally.enqueued / seconds if seconds > 0 else 0.0
    if json_output:
        print_json(
            {
                "queue": queue,
                "enqueued": tally.enqueued,
                "seconds": round(seconds, 6),
                "rate": round(rate, 1),
                "blank_lines": tally.blank,
                "invalid_lines": [{"line": b.line, "reason": b.reason} for b in tally.skipped],
            }
        )
        return
    extra = f", ignored {tally.blank:,} blank lines" if tally.blank else ""
    if tally.skipped:
        extra += f", skipped {len(tally.skipped):,} invalid lines (listed on stderr)"
    stdout_console().print(
        f"Enqueued {tally.enqueued:,} messages to {queue!r} in {seconds:.2f} s "
        f"({rate:,.0f} msg/s){extra}.",
        markup=False,
    )
    for bad in tally.skipped[:_LISTED_BAD_LINES]:
        print(f"  skipped {bad}", file=sys.stderr)
    if len(tally.skipped) > _LISTED_BAD_LINES:
        print(f"  ... and {len(tally.skipped) - _LISTED_BAD_LINES:,} more", file=sys.stderr)
