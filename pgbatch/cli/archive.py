"""``pgbatch archive ...``: retention of processed messages."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer

from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import (
    DEFAULT_SCHEMA,
    DURATION_HELP,
    DebugOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    parse_duration,
)
from pgbatch.cli.output import as_dict, print_json, stdout_console, when
from pgbatch.cli.session import open_client
from pgbatch.maintenance import ensure_archive_partitions, prune_archive

app = typer.Typer(
    name="archive",
    help="Retention of the archive (processed messages and their results).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)


@app.command("prune")
@friendly_errors
def prune(
    older_than: Annotated[
        timedelta,
        typer.Option(
            "--older-than",
            parser=parse_duration,
            metavar="DURATION",
            show_default=False,
            help=f"Remove messages archived longer ago than this ({DURATION_HELP}).",
        ),
    ],
    queue: Annotated[
        str | None,
        typer.Option("--queue", "-q", help="Only this queue's messages.", show_default=False),
    ] = None,
    exact: Annotated[
        bool,
        typer.Option(
            "--exact",
            help="Also delete, row by row, the older part of the day that holds "
            "the cutoff (by default whole days are kept).",
        ),
    ] = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Remove archived messages older than --older-than, and prepare next week's partitions.

    The archive is partitioned by day: every day entirely older than the cutoff is dropped
    as a whole partition, which takes milliseconds however busy the day was. The day that
    holds the cutoff is kept whole (so up to one day more than asked is kept) unless --exact.
    With --queue, days that hold only that queue's messages are dropped and its messages in
    days shared with other queues are deleted row by row. Run it daily, e.g. from cron.

    **Examples**

        pgbatch archive prune --older-than 7d
        pgbatch archive prune --queue emails --older-than 36h
    """
    with open_client(dsn, schema) as client:
        report = prune_archive(client, older_than=older_than, queue=queue, exact=exact)
        created = ensure_archive_partitions(client)
    if json_output:
        print_json({**as_dict(report), "partitions_created": created})
        return
    dropped = report.dropped_partitions
    whose = f" of {queue!r}" if queue else ""
    stdout_console().print(
        f"Pruned the archive{whose} before {when(report.effective_cutoff)}: dropped "
        f"{len(dropped)} daily partitions{(' (' + ', '.join(dropped) + ')') if dropped else ''}"
        f", deleted {report.deleted_rows:,} rows, in {report.seconds * 1000:,.0f} ms.",
        markup=False,
    )
