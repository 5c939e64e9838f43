"""``pgbatch stats``: per-queue counts and throughput, with the health warnings that matter."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.text import Text

import pgbatch
from pgbatch import errors
from pgbatch.cli.errors import friendly_errors, one_line
from pgbatch.cli.options import (
    DEFAULT_SCHEMA,
    DURATION_HELP,
    DebugOption,
    DsnOption,
    JsonOption,
    SchemaOption,
    parse_duration,
)
from pgbatch.cli.output import (
    age,
    as_dict,
    count,
    print_json,
    print_json_line,
    size,
    stdout_console,
    table,
)
from pgbatch.cli.session import open_client
from pgbatch.maintenance import Health, health


def collect(
    client: pgbatch.Client, queue: str | None, xmin_warn_after: timedelta = timedelta(minutes=5)
) -> dict[str, Any]:
    """Stats of one queue or all, the hot table's health and the warnings, as plain data."""
    infos = {info.name: info for info in client.queues()}
    names = [queue] if queue is not None else sorted(infos)
    rows = []
    for name in names:
        stats = client.queue(name).stats()  # QueueNotFound for an unknown name
        rows.append(
            {
                **as_dict(stats),
                "paused": infos[name].paused if name in infos else False,
                "throughput_per_second": stats.archived_last_minute / 60,
            }
        )
    checked: Health | None = None
    warnings: list[str] = []
    try:
        checked = health(client, xmin_warn_after=xmin_warn_after)
        warnings = list(checked.warnings)
    except errors.DatabaseError as exc:
        warnings.append(f"health check unavailable: {one_line(exc)}")
    return {
        "queues": rows,
        "health": as_dict(checked) if checked is not None else None,
        "warnings": warnings,
    }


def render(snapshot: dict[str, Any]) -> RenderableType:
    result = table(
        "queue",
        "ready #",
        "leased #",
        "delayed #",
        "dead #",
        "archived #",
        "oldest ready #",
        "done/s (1 min) #",
    )
    for row in snapshot["queues"]:
        name = Text(row["queue"]) + (Text(" (paused)", style="yellow") if row["paused"] else "")
        result.add_row(
            name,
            count(row["ready"]),
            count(row["leased"]),
            count(row["delayed"]),
            Text(count(row["dead"]), style="red" if row["dead"] else ""),
            count(row["archived"]),
            age(row["oldest_ready_age"]) if row["ready"] else "-",
            f"{row['throughput_per_second']:,.1f}",
        )
    parts: list[RenderableType] = [result]
    checked = snapshot["health"]
    if checked is not None:
        parts.append(
            Text(
                f"message table: {count(checked['live_tuples'])} live, "
                f"{count(checked['dead_tuples'])} dead tuples; {size(checked['table_bytes'])}, "
                f"indexes {size(checked['indexes_bytes'])}; "
                f"archive {size(checked['archive_bytes'])}",
                style="dim",
            )
        )
    parts += [Text(f"warning: {w}", style="yellow") for w in snapshot["warnings"]]
    return Group(*parts)


@friendly_errors
def stats(
    queue: Annotated[
        str | None,
        typer.Argument(
            metavar="[QUEUE]", help="Only this queue (default: all).", show_default=False
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        timedelta,
        typer.Option(
            "--interval",
            parser=parse_duration,
            metavar="DURATION",
            show_default="2s",
            help=f"Time between refreshes with --watch ({DURATION_HELP}).",
        ),
    ] = timedelta(seconds=2),
    count_limit: Annotated[
        int,
        typer.Option(
            "--count", min=0, help="With --watch, stop after this many refreshes (0: never)."
        ),
    ] = 0,
    xmin_warn_after: Annotated[
        timedelta,
        typer.Option(
            "--xmin-warn-after",
            parser=parse_duration,
            metavar="DURATION",
            show_default="5m",
            help="Warn about a transaction (or prepared transaction) that has held back "
            "vacuum for this long.",
        ),
    ] = timedelta(minutes=5),
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Show per queue counts, oldest ready age and throughput, with health warnings.

    For each queue: ready, leased, delayed, dead and archived messages, the age of the oldest
    ready one, and messages done per second over the last minute. Below: the hot table's
    live and dead tuples and sizes, and warnings worth acting on (dead tuples piling up, an
    old transaction holding back vacuum).

    With --json, one JSON document; with --watch --json, one per line per refresh.

    **Examples**

        pgbatch stats
        pgbatch stats emails --watch
        pgbatch stats --json | jq '.queues[] | {queue, ready}'
    """
    with open_client(dsn, schema) as client:

        def snapshot() -> dict[str, Any]:
            return collect(client, queue, xmin_warn_after)

        if not watch:
            if json_output:
                print_json(snapshot())
            else:
                stdout_console().print(render(snapshot()))
            return
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how --watch ends
            _watch(snapshot, interval, count_limit, json_output)


def _watch(
    snapshot: Callable[[], dict[str, Any]], interval: timedelta, limit: int, json_output: bool
) -> None:
    refreshes = 0
    if json_output:
        while limit == 0 or refreshes < limit:
            if refreshes:
                time.sleep(interval.total_seconds())
            print_json_line(snapshot())
            refreshes += 1
        return
    with Live(render(snapshot()), console=stdout_console(), auto_refresh=False) as live:
        refreshes = 1
        while limit == 0 or refreshes < limit:
            time.sleep(interval.total_seconds())
            live.update(render(snapshot()), refresh=True)
            refreshes += 1
