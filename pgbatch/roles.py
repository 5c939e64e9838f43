"""Least-privilege roles for one pgbatch schema: owner, producer, worker and reader.

``create_roles(client)`` creates (or brings up to date) four NOLOGIN group roles and gives
each exactly what its part needs on the client's schema, nothing on other schemas:

==================  ======================================================================
``<prefix>_owner``     owns the schema and every table, sequence and function in it: runs
                       migrations and every operator command (create, drop, purge, requeue,
                       prune). No right outside the schema.
``<prefix>_producer``  enqueues: reads queue settings, inserts messages (it cannot read their
                       payloads back), reads the outcome (result, last error) of a message.
``<prefix>_worker``    dequeues, archives, fails, extends and releases leases, writes dead
                       letters and its own row of the worker registry. It cannot enqueue.
``<prefix>_reader``    statistics and monitoring: counts, ages, settings, the worker registry;
                       never a payload, a result, an error text or a dedup key.
==================  ======================================================================

Group roles cannot log in: grant them to the login roles your programs use, e.g.::

    CREATE ROLE billing_api LOGIN PASSWORD '...';      -- the web app enqueues
    GRANT pgbatch_producer TO billing_api;
    CREATE ROLE billing_worker LOGIN PASSWORD '...';   -- `pgbatch worker ...` runs as this
    GRANT pgbatch_worker TO billing_worker;
    GRANT pgbatch_producer TO billing_worker;          -- only if its handlers enqueue
    CREATE ROLE grafana LOGIN PASSWORD '...';
    GRANT pgbatch_reader, pg_monitor TO grafana;       -- pg_monitor: the xmin-horizon check
    CREATE ROLE deployer LOGIN PASSWORD '...';
    GRANT pgbatch_owner TO deployer;
    ALTER ROLE deployer SET role = 'pgbatch_owner';    -- objects it creates belong to the group

Run migrations as the owner (``SET ROLE`` as above, or ``options=-c role=pgbatch_owner`` in the
DSN) so that new tables belong to the owner group, then run ``create_roles`` (``pgbatch roles``)
again after each migration: it revokes what each group role had on the schema and grants the
current set, so reruns converge. Its caller must be able to create roles and to hand objects
over (a superuser, or a CREATEROLE role that owns the schema's objects).

The DDL below is composed with ``psycopg.sql`` from identifiers only: role names, schema and
table names are always quoted, never spliced into SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from pgbatch import errors

if TYPE_CHECKING:
    from pgbatch.client import Client

__all__ = ["ROLE_KINDS", "create_roles", "role_names"]

ROLE_KINDS = ("owner", "producer", "worker", "reader")
# Lower case so that unquoted GRANT statements written by people find the same role; the
# longest suffix ("_producer") must still fit PostgreSQL's 63-byte names.
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,53}$")
# Columns whose content is the application's data: the reader role never sees them.
_PRIVATE_COLUMNS = ("payload", "payloads", "result", "last_error", "dedup_key")


@dataclass(frozen=True, slots=True)
class TableGrant:
    """Privileges on one table; ``columns`` restricts them to those columns."""

    table: str
    privileges: tuple[str, ...]
    columns: tuple[str, ...] | None = None


# What each role needs, read off the named queries its calls run (see sql/queries/).
_PRODUCER_TABLES = (
    TableGrant("queue", ("SELECT",)),
    # Awaiting results: archives of the queue notify while this is in the future.
    TableGrant("queue", ("UPDATE",), ("results_awaited_until",)),
    TableGrant("schema_migration", ("SELECT",)),  # migrate() checks, finds nothing to do
    TableGrant(
        "message", ("INSERT",), ("id", "queue_id", "priority", "visible_at", "dedup_key", "payload")
    ),
    # RETURNING id and the dedup lookup read these; payloads stay unreadable.
    TableGrant("message", ("SELECT",), ("id", "queue_id", "dedup_key")),
    # A plain batch_enqueue writes packs (migration 0005).
    TableGrant("message_pack", ("INSERT",), ("id", "queue_id", "ids", "payloads")),
    # Awaiting an outcome: a result from the archive, or the last error of a dead letter.
    TableGrant("archive", ("SELECT",), ("id", "queue_id", "archived_at", "result")),
    TableGrant("dead_letter", ("SELECT",), ("id", "queue_id", "attempts", "died_at", "last_error")),
)
_WORKER_TABLES = (
    TableGrant("queue", ("SELECT",)),
    TableGrant("schema_migration", ("SELECT",)),
    TableGrant("message", ("SELECT", "UPDATE", "DELETE")),
    TableGrant("message_pack", ("SELECT", "UPDATE", "DELETE")),
    TableGrant("archive", ("INSERT",)),
    TableGrant("archive", ("SELECT",), ("id",)),  # INSERT ... RETURNING id
    TableGrant("dead_letter", ("INSERT",)),
    TableGrant("dead_letter", ("SELECT",), ("id",)),
    TableGrant("worker", ("SELECT", "INSERT", "UPDATE")),
)
_READER_FULL_TABLES = ("queue", "worker", "schema_migration")
_READER_REDACTED_TABLES = ("message", "message_pack", "archive", "dead_letter")
_SEQUENCES = {"producer": ("message_id_seq",), "worker": ("lease_token_seq",), "reader": ()}
# Functions a role calls, by name and argument types. EXECUTE is PUBLIC's by default, but not
# where a DBA revoked it with ALTER DEFAULT PRIVILEGES: the worker gets it by name.
_FUNCTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "producer": (),
    "worker": (
        ("message_dequeue_candidates", "integer, integer"),
        ("message_pack_take", "integer, integer, bigint, double precision, text, bigint[]"),
        ("message_pack_unpack", "bigint[], bigint[]"),
    ),
    "reader": (),
}


def role_names(prefix: str = "pgbatch") -> dict[str, str]:
    """The group role name of each kind: ``{"owner": "pgbatch_owner", ...}``."""
    if not _PREFIX.fullmatch(prefix):
        raise errors.InvalidArgument(
            f"invalid role prefix {prefix!r}: 1 to 54 lower-case letters, digits or '_',"
            " not a digit first"
        )
    return {kind: f"{prefix}_{kind}" for kind in ROLE_KINDS}


def create_roles(client: Client, *, prefix: str = "pgbatch") -> list[str]:
    """Creates or updates the four group roles for ``client``'s schema; their names.

    One transaction: either every role gets its grants, or nothing changes. An existing role
    of one of these names that can log in or is a superuser is refused (ConfigurationError):
    it is somebody's account, not a pgbatch group.
    """
    names = role_names(prefix)
    schema = client.schema
    queries = client.queries
    with client.db.connection() as conn, conn.transaction():
        _ensure_group_roles(conn, queries.role_list, list(names.values()))
        _hand_schema_to_owner(conn, queries, schema, names["owner"])
        for kind in ("producer", "worker", "reader"):
            _revoke_everything(conn, schema, names[kind])
            conn.execute(
                sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
                    sql.Identifier(schema), sql.Identifier(names[kind])
                )
            )
            for grant in _table_grants(conn, queries.role_table_columns, schema, kind):
                _grant_on_table(conn, schema, grant, names[kind])
            for sequence in _SEQUENCES[kind]:
                conn.execute(
                    sql.SQL("GRANT USAGE ON SEQUENCE {} TO {}").format(
                        sql.Identifier(schema, sequence), sql.Identifier(names[kind])
                    )
                )
            for function, arguments in _FUNCTIONS[kind]:
                conn.execute(
                    sql.SQL("GRANT EXECUTE ON FUNCTION {}({}) TO {}").format(
                        sql.Identifier(schema, function),
                        sql.SQL(arguments),
                        sql.Identifier(names[kind]),
                    )
                )
    return list(names.values())


def _ensure_group_roles(conn: psycopg.Connection[Any], role_list: bytes, names: list[str]) -> None:
    existing = {row[0]: row[1:] for row in conn.execute(role_list, {"names": names})}
    for name in names:
        if name not in existing:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
            continue
        can_login, is_superuser = existing[name]
        if can_login or is_superuser:
            raise errors.ConfigurationError(
                f"role {name!r} exists and {'is a superuser' if is_superuser else 'can log in'}:"
                " pgbatch group roles are NOLOGIN; choose another prefix"
            )


def _hand_schema_to_owner(
    conn: psycopg.Connection[Any], queries: Any, schema: str, owner: str
) -> None:
    """The owner role owns the schema and everything in it, so DDL and migrations are its own."""
    owner_id = sql.Identifier(owner)
    conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(schema), owner_id))
    for relname, is_sequence in conn.execute(queries.role_schema_relations, {"schema": schema}):
        kind = sql.SQL("SEQUENCE" if is_sequence else "TABLE")
        conn.execute(
            sql.SQL("ALTER {} {} OWNER TO {}").format(
                kind, sql.Identifier(schema, relname), owner_id
            )
        )
    for (signature,) in conn.execute(queries.role_schema_functions, {"schema": schema}):
        # regprocedure's text is PostgreSQL's own quoted rendering of the signature.
        conn.execute(sql.SQL("ALTER ROUTINE {} OWNER TO {}").format(sql.SQL(signature), owner_id))


def _revoke_everything(conn: psycopg.Connection[Any], schema: str, role: str) -> None:
    """Starts a role from nothing on the schema, so a rerun drops grants no longer needed."""
    schema_id, role_id = sql.Identifier(schema), sql.Identifier(role)
    for objects in ("TABLES", "SEQUENCES", "ROUTINES"):
        conn.execute(
            sql.SQL("REVOKE ALL ON ALL {} IN SCHEMA {} FROM {}").format(
                sql.SQL(objects), schema_id, role_id
            )
        )
    conn.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema_id, role_id))


def _table_grants(
    conn: psycopg.Connection[Any], table_columns: bytes, schema: str, kind: str
) -> Sequence[TableGrant]:
    if kind == "producer":
        return _PRODUCER_TABLES
    if kind == "worker":
        return _WORKER_TABLES
    grants = [TableGrant(table, ("SELECT",)) for table in _READER_FULL_TABLES]
    for table in _READER_REDACTED_TABLES:
        rows = conn.execute(
            table_columns,
            {"schema": schema, "table": table, "excluded": list(_PRIVATE_COLUMNS)},
        ).fetchall()
        grants.append(TableGrant(table, ("SELECT",), tuple(row[0] for row in rows)))
    return grants


def _grant_on_table(
    conn: psycopg.Connection[Any], schema: str, grant: TableGrant, role: str
) -> None:
    columns = (
        sql.SQL("")
        if grant.columns is None
        else sql.SQL(" ({})").format(sql.SQL(", ").join(map(sql.Identifier, grant.columns)))
    )
    privileges = sql.SQL(", ").join(
        sql.SQL("{}{}").format(sql.SQL(privilege), columns) for privilege in grant.privileges
    )
    conn.execute(
        sql.SQL("GRANT {} ON TABLE {} TO {}").format(
            privileges, sql.Identifier(schema, grant.table), sql.Identifier(role)
        )
    )
