"""``pgbatch worker MODULE:APP``: run the batch handlers of an App in worker processes.

The command only checks and translates flags: the supervisor (``pgbatch.worker.supervisor``)
imports the operator's module, starts the processes, restarts a child that dies, and serves
the Prometheus metrics. Only the module named on the command line is imported.
"""

from __future__ import annotations

import re
from typing import Annotated

import typer

from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import BatchSize, DebugOption, DsnOption, parse_batch_size

_APP_PATH = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)


def check_app_path(value: str) -> str:
    if not _APP_PATH.fullmatch(value):
        raise typer.BadParameter(
            f"{value!r} is not MODULE:APP, e.g. myproject.tasks:app (a module importable from "
            "the current directory, and the name of the pgbatch.App in it)"
        )
    return value


@friendly_errors
def worker(
    app_path: Annotated[
        str,
        typer.Argument(
            metavar="MODULE:APP",
            callback=check_app_path,
            show_default=False,
            help="Where your pgbatch.App is, e.g. myproject.tasks:app.",
        ),
    ],
    queues: Annotated[
        list[str] | None,
        typer.Option(
            "--queue",
            "-q",
            show_default="every queue with a handler",
            help="Only these queues (repeat for several).",
        ),
    ] = None,
    processes: Annotated[
        int, typer.Option("--processes", "-p", min=1, help="Worker processes.")
    ] = 1,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Batches in flight per process.")
    ] = 4,
    batch_size: Annotated[
        str | None,
        typer.Option(
            "--batch-size",
            metavar="N|auto",
            show_default="each handler's own",
            help="Messages per batch for every handler, or 'auto' to adapt it.",
        ),
    ] = None,
    until_empty: Annotated[
        bool,
        typer.Option("--until-empty", help="Exit once no message is left to process."),
    ] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            min=1,
            max=65535,
            show_default=False,
            help="Serve Prometheus metrics on this port (archived, failed, dead-lettered, "
            "batch durations, lease losses, queue depth).",
        ),
    ] = None,
    dsn: DsnOption = None,
    debug: DebugOption = False,
) -> None:
    """Run a worker: processes that take batches from the queues and run your handlers.

    SIGTERM or Ctrl-C stops taking new batches, lets those in flight finish and hands back
    the rest; a second signal stops at once. The App's own DSN and schema apply unless
    --dsn is given.

    **Examples**

        pgbatch worker myproject.tasks:app
        pgbatch worker myproject.tasks:app --queue emails --processes 2 --batch-size auto
        pgbatch worker myproject.tasks:app --until-empty --metrics-port 9100
    """
    size: BatchSize | None = None if batch_size is None else parse_batch_size(batch_size)
    # Imported here: the other commands must not pay for (or depend on) the worker runtime.
    from pgbatch.worker.child import configure_logging
    from pgbatch.worker.supervisor import run_supervisor

    # The supervisor's own lines (children started, restarted, stopped) as the children's:
    # on stderr, at PGBATCH_LOG_LEVEL (INFO by default).
    configure_logging()
    code = run_supervisor(
        app_path,
        processes=processes,
        queues=queues or None,
        concurrency=concurrency,
        batch_size=size,
        until_empty=until_empty,
        metrics_port=metrics_port,
        dsn=dsn,
    )
    raise typer.Exit(code)
