"""The ``pgbatch`` command: the root app, its command groups, and ``main()``."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.util import find_spec
from typing import Annotated

import typer

import pgbatch
from pgbatch.cli import archive, dead, demo, enqueue, migrate, queue, stats, worker, workers

HELP = """pgbatch: a PostgreSQL-backed job queue whose unit of work is a batch.

With no --dsn (and no $PGBATCH_DSN or $DATABASE_URL) every command uses an embedded
PostgreSQL kept in ./.pgbatch, started on first use: nothing to set up to try it.
Commands migrate the schema on first use; `pgbatch migrate` does it explicitly.
Every command explains itself with examples: `pgbatch COMMAND --help`.

**Getting started**

    pgbatch demo
    pgbatch queue create emails
    pgbatch enqueue emails --file emails.jsonl
    pgbatch worker myproject.tasks:app --processes 2
    pgbatch stats --watch
"""

app = typer.Typer(
    name="pgbatch",
    help=HELP,
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

START = "Start here"
FLOW = "Move messages"
WATCH = "Watch"
OPERATE = "Operate"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"pgbatch {pgbatch.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_show_version,
            is_eager=True,
            help="Print pgbatch's version and exit.",
        ),
    ] = False,
) -> None:
    # The callback's docstring would replace HELP: the root's help comes from HELP.
    pass


app.command("demo", rich_help_panel=START)(demo.demo)
app.command("migrate", rich_help_panel=START)(migrate.migrate)
app.command("enqueue", rich_help_panel=FLOW)(enqueue.enqueue)
app.command("worker", rich_help_panel=FLOW)(worker.worker)
app.command("stats", rich_help_panel=WATCH)(stats.stats)
app.command("workers", rich_help_panel=WATCH)(workers.workers)
app.add_typer(queue.app, name="queue", rich_help_panel=OPERATE)
app.add_typer(dead.app, name="dead", rich_help_panel=OPERATE)
app.add_typer(archive.app, name="archive", rich_help_panel=OPERATE)

if find_spec("pgbatch.roles") is not None:
    from pgbatch.cli import roles

    app.command("roles", rich_help_panel=OPERATE)(roles.roles)


def main(argv: Sequence[str] | None = None) -> None:
    """The console script: ``pgbatch``."""
    app(args=list(argv) if argv is not None else None, prog_name="pgbatch")
