"""``pgbatch dead ...``: list, requeue and purge a queue's dead letters."""

from __future__ import annotations

from typing import Annotated

import orjson
import typer
from rich.text import Text

from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import (
    DEFAULT_SCHEMA,
    DebugOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    YesOption,
)
from pgbatch.cli.output import as_dict, print_json, shorten, stdout_console, table, when
from pgbatch.cli.session import open_client

app = typer.Typer(
    name="dead",
    help="Inspect, requeue and purge dead letters (messages that used up their attempts).",
    no_args_is_help=True,
    rich_markup_mode="markdown",
)

QueueName = Annotated[
    str, typer.Argument(metavar="QUEUE", help="The queue's name.", show_default=False)
]


@app.command("list")
@friendly_errors
def list_dead(
    queue: QueueName,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many.")] = 100,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List a queue's dead letters, oldest first, with their last error.

    **Examples**

        pgbatch dead list emails
        pgbatch dead list emails --json --limit 1000 > dead.json
    """
    with open_client(dsn, schema) as client:
        letters = client.queue(queue).dead_letters(limit=limit)
    if json_output:
        print_json([as_dict(letter) for letter in letters])
        return
    console = stdout_console()
    if not letters:
        console.print(f"No dead letters in queue {queue!r}.", markup=False)
        return
    result = table("id #", "attempts #", "died", "last error", "payload")
    for letter in letters:
        result.add_row(
            str(letter.id),
            str(letter.attempts),
            when(letter.died_at),
            Text(shorten(letter.last_error or "", 60)),
            Text(shorten(orjson.dumps(letter.payload).decode(), 60)),
        )
    console.print(result)
    if len(letters) == limit:
        console.print(f"(showing the first {limit}; use --limit for more)", markup=False)


@app.command("requeue")
@friendly_errors
def requeue(
    queue: QueueName,
    ids: Annotated[
        list[int] | None,
        typer.Option("--id", help="A dead letter's id (repeat for several).", show_default=False),
    ] = None,
    all_letters: Annotated[
        bool, typer.Option("--all", help="Requeue every dead letter of the queue.")
    ] = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Put dead letters back in the queue as fresh messages (attempts reset, visible at once).

    **Examples**

        pgbatch dead requeue emails --id 1042 --id 1043
        pgbatch dead requeue emails --all
    """
    if bool(ids) == all_letters:
        raise typer.BadParameter("give either --id N (one or more) or --all")
    with open_client(dsn, schema) as client:
        requeued = client.queue(queue).requeue_dead(None if all_letters else ids)
    missing = (
        ""
        if all_letters or requeued == len(set(ids or []))
        else (f" ({len(set(ids or [])) - requeued} of the ids given were not dead letters of it)")
    )
    stdout_console().print(
        f"Requeued {requeued:,} dead letters into {queue!r}{missing}.", markup=False
    )


@app.command("purge")
@friendly_errors
def purge(
    queue: QueueName,
    yes: YesOption = False,
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    debug: DebugOption = False,
) -> None:
    """Delete a queue's dead letters for good; asks unless --yes.

    **Example**

        pgbatch dead purge emails --yes
    """
    with open_client(dsn, schema) as client:
        target = client.queue(queue)
        if not yes:
            typer.confirm(f"Delete every dead letter of queue {queue!r}?", abort=True)
        removed = target.purge_dead()
    stdout_console().print(f"Deleted {removed:,} dead letters of {queue!r}.", markup=False)
