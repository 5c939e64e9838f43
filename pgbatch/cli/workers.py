"""``pgbatch workers``: the worker registry, live workers and recently stopped or lost ones."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import typer
from rich.text import Text

import pgbatch
from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import (
    DEFAULT_SCHEMA,
    DURATION_HELP,
    DebugOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    format_duration,
    parse_duration,
)
from pgbatch.cli.output import age, as_dict, count, print_json, stdout_console, table, when
from pgbatch.cli.session import open_client
from pgbatch.operations import Plan, Statement
from pgbatch.queries import Queries

STATE_STYLE = {"live": "green", "lost": "red", "stopped": "dim"}


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """A worker process as the registry and its heartbeat age say. ``state`` is ``live``
    (recent heartbeat), ``stopped`` (shut down cleanly) or ``lost`` (died without stopping)."""

    id: str
    host: str
    pid: int
    queues: list[str]
    state: str
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    heartbeat_age: float
    batches_done: int
    messages_done: int


def _list_plan(q: Queries, recent: timedelta, stale_after: timedelta) -> Plan[list[WorkerRow]]:
    rows = yield Statement(q.worker_list_recent, {"recent_seconds": recent.total_seconds()})
    result = []
    for wid, host, pid, queues, started, beat, stopped, batches, messages, beat_age in rows:
        if stopped is not None:
            state = "stopped"
        else:
            state = "live" if beat_age <= stale_after.total_seconds() else "lost"
        result.append(
            WorkerRow(
                wid,
                host,
                pid,
                list(queues),
                state,
                started,
                beat,
                stopped,
                beat_age,
                batches,
                messages,
            )
        )
    return result


def recent_workers(
    client: pgbatch.Client, *, recent: timedelta, stale_after: timedelta
) -> list[WorkerRow]:
    return client.db.run(_list_plan(client.queries, recent, stale_after), transaction=False)


@friendly_errors
def workers(
    stale_after: Annotated[
        timedelta,
        typer.Option(
            "--stale-after",
            parser=parse_duration,
            metavar="DURATION",
            show_default="30s",
            help=f"A worker without a heartbeat for this long is lost ({DURATION_HELP}).",
        ),
    ] = timedelta(seconds=30),
    recent: Annotated[
        timedelta,
        typer.Option(
            "--recent",
            parser=parse_duration,
            metavar="DURATION",
            show_default="1h",
            help="Also show workers stopped or lost within this long.",
        ),
    ] = timedelta(hours=1),
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """List worker processes: live ones, and those stopped or lost recently.

    A live worker heartbeats every few seconds; one whose heartbeat is older than
    --stale-after died without stopping (its messages come back when their leases expire).

    **Examples**

        pgbatch workers
        pgbatch workers --recent 1d --json
    """
    with open_client(dsn, schema) as client:
        found = recent_workers(client, recent=recent, stale_after=stale_after)
    if json_output:
        print_json([as_dict(w) for w in found])
        return
    console = stdout_console()
    if not found:
        console.print(f"No worker seen in the last {format_duration(recent)}.")
        return
    result = table(
        "worker",
        "host",
        "pid #",
        "queues",
        "state",
        "started",
        "heartbeat #",
        "batches #",
        "messages #",
    )
    for w in found:
        result.add_row(
            Text(w.id),
            Text(w.host),
            str(w.pid),
            Text(", ".join(w.queues)),
            Text(w.state, style=STATE_STYLE[w.state]),
            when(w.started_at),
            f"{age(w.heartbeat_age)} ago",
            count(w.batches_done),
            count(w.messages_done),
        )
    console.print(result)
    live = sum(w.state == "live" for w in found)
    console.print(f"{live} live, {len(found) - live} stopped or lost.")
