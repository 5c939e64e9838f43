"""How the command line reports failures: one readable line on stderr, exit code 1.

Usage errors (bad flags, bad values) stay with typer, which prints them with the usage and
exits 2. Everything else a command raises becomes ``pgbatch: <message>`` and exit 1, with the
traceback only under ``--debug`` (or ``PGBATCH_DEBUG=1``). Messages pass through
``scrub_secrets`` first, so that no DSN password reaches the terminal even from an error
that did not come through ``pgbatch.dsn``.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

from pgbatch.errors import PgBatchError

P = ParamSpec("P")
R = TypeVar("R")

DEBUG_ENV = "PGBATCH_DEBUG"

# user:password@ in URLs, password=... in key=value strings and URL queries.
_URL_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/?#@\s]*:)[^@\s]*@", re.IGNORECASE)
_KEY_PASSWORD = re.compile(r"\b((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)
# Typer's own exceptions (usage errors, Exit, Abort) carry their exit code: let them through.
_TYPER_SIGNALS = (typer.TyperException, typer.Exit, typer.Abort)


def scrub_secrets(text: str) -> str:
    """The text with anything that looks like a DSN password replaced by ***."""
    text = _URL_PASSWORD.sub(r"\1***@", text)
    return _KEY_PASSWORD.sub(r"\1***", text)


def one_line(exc: BaseException) -> str:
    """A single line for people: pgbatch's own messages as they are, others with their type."""
    message = " ".join(str(exc).split())
    if not isinstance(exc, PgBatchError | OSError):
        message = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return scrub_secrets(message or type(exc).__name__)


def report_error(message: str) -> None:
    """``pgbatch: message`` on stderr."""
    print(f"pgbatch: {message}", file=sys.stderr, flush=True)


def debug_requested(debug: object) -> bool:
    return bool(debug) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def friendly_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Wraps a command: failures become one line on stderr and exit 1 (unless --debug)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except _TYPER_SIGNALS:
            raise
        except Exception as exc:
            if debug_requested(kwargs.get("debug")):
                raise
            hint = "" if isinstance(exc, PgBatchError | OSError) else " (rerun with --debug)"
            report_error(one_line(exc) + hint)
            raise typer.Exit(1) from None

    return wrapper
