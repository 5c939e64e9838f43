"""Opening a client for a command: resolve the DSN, connect, and migrate on first use.

Commands migrate lazily: the first command run against a fresh database or schema brings it
up to date (a note on stderr says so), so a new user never has to learn ``pgbatch migrate``
first. Checking costs one read of ``schema_migration``; DDL runs only when a migration is
pending, so roles without the right to create anything can still use every other command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pgbatch
from pgbatch import errors
from pgbatch.cli.output import note
from pgbatch.migrate import applied_versions, available_migrations

APPLICATION_NAME = "pgbatch-cli"


def pending_migrations(client: pgbatch.Client) -> list[int]:
    """Versions shipped with pgbatch and not yet applied to the client's schema."""
    with client.db.connection() as conn:
        done = applied_versions(conn, client.schema)
    return [m.version for m in available_migrations() if m.version not in done]


def ensure_migrated(client: pgbatch.Client) -> list[int]:
    """Applies pending migrations, if any; the versions applied."""
    try:
        pending = pending_migrations(client)
    except errors.DatabaseUnavailable:
        raise
    except errors.DatabaseError:
        # A least-privilege role may not read schema_migration: it cannot migrate anyway,
        # and the command itself will say what is missing.
        return []
    if not pending:
        return []
    applied = client.migrate()
    if applied:
        note(f"pgbatch: migrated schema {client.schema!r} (applied {_versions(applied)})")
    return applied


def _versions(versions: list[int]) -> str:
    return ", ".join(f"{v:04d}" for v in versions)


@contextmanager
def open_client(
    dsn: str | None, schema: str, *, migrate: bool = True, max_size: int = 4
) -> Iterator[pgbatch.Client]:
    """A connected Client on ``schema``, migrated unless ``migrate`` is False."""
    with pgbatch.connect(
        dsn, schema=schema, min_size=1, max_size=max_size, application_name=APPLICATION_NAME
    ) as client:
        if migrate:
            ensure_migrated(client)
        yield client
