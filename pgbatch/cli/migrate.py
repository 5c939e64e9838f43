"""``pgbatch migrate``: bring a schema up to date explicitly (deploys, docker compose)."""

from __future__ import annotations

from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import DEFAULT_SCHEMA, DebugOption, DsnOption, JsonOption, SchemaOption
from pgbatch.cli.output import print_json, stdout_console
from pgbatch.cli.session import open_client
from pgbatch.dsn import describe_dsn
from pgbatch.maintenance import ensure_archive_partitions


@friendly_errors
def migrate(
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Apply pgbatch's migrations to the schema (safe to run repeatedly and concurrently).

    Every other command also migrates on first use; run this one in deploy scripts so that
    workers and producers start on an up-to-date schema. It also creates the archive's daily
    partitions for the week ahead.

    **Examples**

        pgbatch migrate --dsn postgresql://app@db:5432/app
        PGBATCH_DSN=postgresql://app@db/app pgbatch migrate --schema jobs
    """
    with open_client(dsn, schema, migrate=False) as client:
        applied = client.migrate()
        partitions = ensure_archive_partitions(client)
        target = describe_dsn(client.dsn)
    if json_output:
        print_json({"schema": schema, "applied": applied, "partitions_created": partitions})
        return
    done = ", ".join(f"{v:04d}" for v in applied)
    if applied:
        message = f"Migrated schema {schema!r} on {target}: applied {done}."
    else:
        message = f"Schema {schema!r} on {target} is up to date."
    stdout_console().print(message, markup=False)
