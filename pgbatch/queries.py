"""The named SQL statements of ``sql/queries/*.sql``, parsed once, rendered per schema.

Each block starts with ``-- name: entity_verb``; the text up to the next header is the
statement. Table names are written ``{schema}.table`` and rendered with ``psycopg.sql``
so the schema is always a quoted identifier. Code asks for statements by name: every
runtime SQL string lives in sql/.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from psycopg import sql

_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    """Split a file of ``-- name:`` blocks into {name: statement}."""
    parts = _HEADER.split(text)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements:
            raise ValueError(f"duplicate query name {name!r}")
        statements[name] = body.strip().rstrip(";").strip()
    return statements


@cache
def query_templates() -> dict[str, str]:
    """Every named statement from every file in sql/queries, not yet rendered."""
    found: dict[str, str] = {}
    folder = resources.files("pgbatch.sql").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        for name, statement in parse_named_queries(entry.read_text(encoding="utf-8")).items():
            if name in found:
                raise ValueError(f"query {name!r} is defined twice")
            found[name] = statement
    return found


class Queries:
    """The statements for one schema, rendered once: ``Queries("pgbatch").message_dequeue_many``."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        schema_id = sql.Identifier(schema)
        qualified = schema_id.as_string(None)
        names = {
            "schema": schema_id,
            "message_id_seq": sql.Literal(f"{qualified}.message_id_seq"),
            "lease_token_seq": sql.Literal(f"{qualified}.lease_token_seq"),
            "message_table": sql.Literal(f"{qualified}.message"),
            "message_pack_table": sql.Literal(f"{qualified}.message_pack"),
        }
        # Encoded once: psycopg takes bytes as they are, where it would encode a str and hash
        # the new bytes (to find its cached parse and prepared statement) on every execute.
        self._rendered = {
            name: sql.SQL(template).format(**names).as_string(None).encode()
            for name, template in query_templates().items()
        }

    def __getattr__(self, name: str) -> bytes:
        try:
            return self._rendered[name]
        except KeyError:
            raise AttributeError(f"no query named {name!r}") from None

    def names(self) -> list[str]:
        return sorted(self._rendered)


@cache
def queries_for(schema: str) -> Queries:
    return Queries(schema)
