"""Options every command shares, and the parsers of values people type (durations, sizes).

Each command declares ``dsn``, ``schema`` and ``debug`` with the aliases below, so that
``pgbatch stats --dsn ...`` works after the command name, where people put it.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

import typer

CONNECTION_PANEL = "Connection"

DsnOption = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        help=(
            "PostgreSQL connection string (postgresql://user@host:5432/db or 'host=... "
            "dbname=...'). Default: $PGBATCH_DSN, then $DATABASE_URL, then the embedded server "
            "kept in ./.pgbatch (started on first use)."
        ),
        show_default=False,
        rich_help_panel=CONNECTION_PANEL,
    ),
]
SchemaOption = Annotated[
    str,
    typer.Option(
        "--schema",
        help="The PostgreSQL schema that holds pgbatch's tables.",
        rich_help_panel=CONNECTION_PANEL,
    ),
]
DebugOption = Annotated[
    bool,
    typer.Option("--debug", help="Show the full traceback of an error.", show_default=False),
]
JsonOption = Annotated[
    bool,
    typer.Option("--json", help="Print JSON for scripts instead of a table.", show_default=False),
]
YesOption = Annotated[
    bool,
    typer.Option("--yes", "-y", help="Do not ask for confirmation.", show_default=False),
]

DEFAULT_SCHEMA = "pgbatch"

_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_PLAIN_NUMBER = re.compile(r"\d+(?:\.\d+)?")
DURATION_HELP = "a number of seconds or a number with a unit: 500ms, 30s, 10m, 1h30m, 7d, 2w"


def parse_duration(text: str | timedelta) -> timedelta:
    """``30s``, ``10m``, ``1h30m``, ``7d`` (or plain seconds) as a timedelta.

    Raises typer.BadParameter, which the command line reports as a usage error (exit 2).
    """
    if isinstance(text, timedelta):  # a default that is already parsed
        return text
    value = text.strip().lower()
    if _PLAIN_NUMBER.fullmatch(value):
        return timedelta(seconds=float(value))
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match[1]) * _UNIT_SECONDS[match[2]]
        position = match.end()
    if position == 0 or position != len(value):
        raise typer.BadParameter(f"{text!r} is not a duration: use {DURATION_HELP}")
    return timedelta(seconds=total)


def format_duration(value: timedelta | float) -> str:
    """The inverse of parse_duration for display: ``1h30m``, ``45s``, ``250ms``."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    parts = []
    remaining = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0s"


BatchSize = int | Literal["auto"]


def parse_batch_size(text: str) -> BatchSize:
    """A positive integer, or ``auto`` for the adaptive batch size."""
    value = text.strip().lower()
    if value == "auto":
        return "auto"
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise typer.BadParameter(
        f"{text!r} is not a batch size: use a positive integer or 'auto'",
        param_hint="'--batch-size'",
    )
