"""``pgbatch roles``: create the least-privilege group roles for a schema."""

from __future__ import annotations

from typing import Annotated

import typer

from pgbatch.cli.errors import friendly_errors
from pgbatch.cli.options import DEFAULT_SCHEMA, DebugOption, DsnOption, JsonOption, SchemaOption
from pgbatch.cli.output import print_json, stdout_console
from pgbatch.cli.session import open_client
from pgbatch.roles import create_roles


@friendly_errors
def roles(
    prefix: Annotated[
        str, typer.Option("--prefix", help="Role names are PREFIX_owner, PREFIX_producer, ...")
    ] = "pgbatch",
    dsn: DsnOption = None,
    schema: SchemaOption = DEFAULT_SCHEMA,
    json_output: JsonOption = False,
    debug: DebugOption = False,
) -> None:
    """Create (or update) the owner, producer, worker and reader group roles of the schema.

    The roles cannot log in: grant them to the login roles your programs use. Run it again
    after each migration (it converges). Needs a role that can create roles.

    **Examples**

        pgbatch roles
        psql -c 'GRANT pgbatch_producer TO billing_api'
    """
    with open_client(dsn, schema) as client:
        names = create_roles(client, prefix=prefix)
    if json_output:
        print_json({"schema": schema, "roles": names})
        return
    console = stdout_console()
    console.print(f"Group roles for schema {schema!r}: {', '.join(names)}.", markup=False)
    console.print(
        f"Grant them to login roles, e.g.: GRANT {prefix}_worker TO my_worker_login;",
        markup=False,
    )
