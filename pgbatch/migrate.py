"""Applies the numbered migrations of sql/migrations, forward only.

Each migration runs in its own transaction with search_path set to the target schema, and
is recorded in ``schema_migration``. A session-level advisory lock, keyed on the schema name,
makes concurrent ``migrate()`` calls wait for each other instead of racing.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

_FILE_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")
# High bits of the advisory lock key, so ours do not collide with an application's small keys.
_LOCK_NAMESPACE = 0x7067_6261 << 32


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    text: str


def available_migrations() -> list[Migration]:
    """The migrations shipped in the package, in version order."""
    folder = resources.files("pgbatch.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a version: {versions}")
    return found


def _lock_key(schema: str) -> int:
    return _LOCK_NAMESPACE | zlib.crc32(schema.encode())


def applied_versions(conn: psycopg.Connection[Any], schema: str) -> set[int]:
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, "schema_migration").as_string(None),),
    ).fetchone()
    if not exists or not exists[0]:
        return set()
    rows = conn.execute(
        sql.SQL("SELECT version FROM {}").format(sql.Identifier(schema, "schema_migration"))
    ).fetchall()
    return {int(row[0]) for row in rows}


def _up_to_date(conn: psycopg.Connection[Any], schema: str) -> bool:
    done = applied_versions(conn, schema)
    return all(m.version in done for m in available_migrations())


def _schema_exists(conn: psycopg.Connection[Any], schema: str) -> bool:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s)", (schema,)
    ).fetchone()
    return bool(row and row[0])


def migrate(conn: psycopg.Connection[Any], schema: str) -> list[int]:
    """Applies every migration not yet applied to ``schema``; returns the versions applied.

    ``conn`` must be in autocommit mode: each migration gets its own transaction.
    """
    if _up_to_date(conn, schema):
        # No lock and no DDL: roles that may not create anything (a worker) can call it.
        return []
    conn.execute("SELECT pg_advisory_lock(%s)", (_lock_key(schema),))
    try:
        # CREATE SCHEMA IF NOT EXISTS needs CREATE on the database even when the schema
        # exists; skipping it lets the schema's owner role (pgbatch.roles) migrate without it.
        if not _schema_exists(conn, schema):
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema, "schema_migration"))
        )
        done = applied_versions(conn, schema)
        applied = []
        for migration in available_migrations():
            if migration.version in done:
                continue
            with conn.transaction():
                # pg_temp named last: functions record this path (SET search_path FROM
                # CURRENT), and a path without it searches a caller's temporary tables first.
                conn.execute(
                    sql.SQL("SET LOCAL search_path TO {}, pg_temp").format(sql.Identifier(schema))
                )
                conn.execute(migration.text.encode())
                conn.execute(
                    sql.SQL("INSERT INTO {} (version, name) VALUES (%s, %s)").format(
                        sql.Identifier(schema, "schema_migration")
                    ),
                    (migration.version, migration.name),
                )
            applied.append(migration.version)
        return applied
    finally:
        conn.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(schema),))
