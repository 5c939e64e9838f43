"""``pgbatch queue ...``: create, list, pause, resume, purge and drop queues."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import (
    DEFAULT_SCHEMA,
    DURATION_HELP,
    DebugOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    YesOption,
    format_duration,
    parse_duration,
)
from pgbatch.cli.output import as_dict, count, print_json, stdout_console, table, when
from pgbatch.cli.session import open_client

app = typer.Typer(
    name="queue",
    help="Create, list, pause, resume, purge and drop queues.",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

QueueName = Annotated[
    str, typer.Argument(metavar="QUEUE", help="The queue's name.", show_default=False)
]


def _duration_option(name: str, what: str, default: str) -> Any:
    return typer.Option(
        name,
        help=f"{what} ({DURATION_HELP}).",
        parser=parse_duration,
        metavar="DURATION",
        show_default=default,
    )


@app.command("create")
@friendly_errors
def create(
    name: QueueName,
    lease: Annotated[
        timedelta, _duration_option("--lease", "Visibility lease of a dequeued message", "30s")
    ] = timedelta(seconds=30),
    max_attempts: Annotated[
        int, typer.Option("--max-attempts", min=1, help="Deliveries before a dead letter.")
    ] = 5,
    backoff_base: Annotated[
        timedelta, _duration_option("--backoff-base", "First retry delay after a failure", "1s")
    ] = timedelta(seconds=1),
    backoff_max: Annotated[
        timedelta, _duration_option("--backoff-max", "Longest retry delay", "10m")
    ] = timedelta(minutes=10),
    max_payload_bytes: Annotated[
        int, typer.Option("--max-payload-bytes", min=1, help="Largest payload accepted.")
    ] = 1 << 20,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Create a queue (an existing queue keeps its settings).

    Failed messages come back after an exponential backoff with jitter, from --backoff-base
    doubling up to --backoff-max, and go to the dead letters after --max-attempts deliveries.

    **Examples**

        pgbatch queue create emails
        pgbatch queue create emails --lease 2m --max-attempts 10 --backoff-base 5s --backoff-max 1h
    """
    with open_client(dsn, schema) as client:
        existed = any(info.name == name for info in client.queues())
        client.create_queue(
            name,
            # Seconds, so that an error says "got 0.0" rather than quoting a timedelta.
            lease_seconds=lease.total_seconds(),
            max_attempts=max_attempts,
            backoff_base=backoff_base.total_seconds(),
            backoff_max=backoff_max.total_seconds(),
            max_payload_bytes=max_payload_bytes,
        )
    message = (
        f"Queue {name!r} already exists; its settings are unchanged."
        if existed
        else f"Created queue {name!r}."
    )
    stdout_console().print(message, markup=False)


@app.command("list")
@friendly_errors
def list_queues(
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List the queues with their settings.

    **Examples**

        pgbatch queue list
        pgbatch queue list --json | jq '.[].name'
    """
    with open_client(dsn, schema) as client:
        infos = client.queues()
    if json_output:
        print_json([as_dict(info) for info in infos])
        return
    result = table(
        "queue", "state", "lease", "max attempts #", "backoff", "max payload #", "created"
    )
    for info in infos:
        result.add_row(
            info.name,
            "paused" if info.paused else "active",
            format_duration(info.lease_seconds),
            count(info.max_attempts),
            f"{format_duration(info.backoff_base_seconds)} .. "
            f"{format_duration(info.backoff_max_seconds)}",
            count(info.max_payload_bytes),
            when(info.created_at),
        )
    console = stdout_console()
    console.print(result if infos else "No queues yet: create one with `pgbatch queue create`.")


@app.command("pause")
@friendly_errors
def pause(
    name: QueueName,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Pause a queue: it keeps accepting messages but hands none out.

    **Example**

        pgbatch queue pause emails
    """
    with open_client(dsn, schema) as client:
        client.pause_queue(name)
    stdout_console().print(f"Paused queue {name!r}.", markup=False)


@app.command("resume")
@friendly_errors
def resume(
    name: QueueName,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Resume a paused queue: workers take its messages again at once.

    **Example**

        pgbatch queue resume emails
    """
    with open_client(dsn, schema) as client:
        client.resume_queue(name)
    stdout_console().print(f"Resumed queue {name!r}.", markup=False)


@app.command("purge")
@friendly_errors
def purge(
    name: QueueName,
    yes: YesOption = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Delete every message still in a queue (ready, delayed or leased); asks unless --yes.

    The archive and the dead letters are kept.

    **Example**

        pgbatch queue purge emails --yes
    """
    with open_client(dsn, schema) as client:
        queue = client.queue(name)
        if not yes:
            typer.confirm(f"Delete every message in queue {name!r}?", abort=True)
        removed = queue.purge()
    stdout_console().print(f"Purged {removed:,} messages from queue {name!r}.", markup=False)


@app.command("drop")
@friendly_errors
def drop(
    name: QueueName,
    yes: YesOption = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Drop a queue with its messages, dead letters and archive; asks unless --yes.

    **Example**

        pgbatch queue drop emails --yes
    """
    with open_client(dsn, schema) as client:
        client.queue(name)  # QueueNotFound before asking
        if not yes:
            typer.confirm(
                f"Drop queue {name!r} with its messages, dead letters and archive?", abort=True
            )
        client.drop_queue(name)
    stdout_console().print(f"Dropped queue {name!r}.", markup=False)
