"""The ``pgbatch`` command line (typer + rich). ``main`` is the console script."""

from pgbatch.cli.app import app, main

__all__ = ["app", "main"]
