"""Output for people (rich tables, colour only on a terminal) and for scripts (JSON)."""

from __future__ import annotations

import dataclasses
import os
import sys
from datetime import datetime, timedelta
from typing import Any

import orjson
from rich.console import Console
from rich.table import Table

# Tables piped to a file or a pager are not squeezed into 80 columns ($COLUMNS still wins).
_PIPE_WIDTH = 200


def _console(stderr: bool) -> Console:
    # Built per call, not at import: rich decides colours when a Console is made, and the
    # stream may have been swapped since (tests, redirections).
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and not os.environ.get("COLUMNS"):
        console = Console(stderr=stderr, highlight=False, width=_PIPE_WIDTH)
    return console


def stdout_console() -> Console:
    return _console(stderr=False)


def stderr_console() -> Console:
    return _console(stderr=True)


def note(message: str) -> None:
    """A progress or status line for people, on stderr so stdout stays clean for scripts."""
    stderr_console().print(message, markup=False)


def warn(message: str) -> None:
    stderr_console().print(f"warning: {message}", style="yellow", markup=False)


def _json_default(value: Any) -> Any:
    if isinstance(value, timedelta):
        return value.total_seconds()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def print_json(value: Any) -> None:
    """One JSON document on stdout (dataclasses, datetimes and timedeltas included)."""
    data = orjson.dumps(
        value, default=_json_default, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS
    )
    sys.stdout.write(data.decode() + "\n")
    sys.stdout.flush()


def print_json_line(value: Any) -> None:
    """One compact JSON document per line (for --watch --json)."""
    sys.stdout.write(orjson.dumps(value, default=_json_default).decode() + "\n")
    sys.stdout.flush()


def as_dict(value: Any) -> dict[str, Any]:
    return dataclasses.asdict(value)


def table(*columns: str, title: str | None = None) -> Table:
    """A table whose numeric columns (names ending in '#') are right-aligned."""
    result = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        numeric = column.endswith("#")
        result.add_column(column.rstrip("#").strip(), justify="right" if numeric else "left")
    return result


def count(value: int | float) -> str:
    return f"{value:,.0f}"


def rate(messages: float, seconds: float) -> str:
    return f"{messages / seconds:,.0f} msg/s" if seconds > 0 else "-"


def age(seconds: float | None) -> str:
    """A short age for tables: 850ms, 12s, 4m10s, 3h2m, 5d."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


def size(num_bytes: int) -> str:
    value = float(num_bytes)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"


def when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
