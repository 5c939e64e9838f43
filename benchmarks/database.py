"""The harness's own database work: fresh schemas, ready backlogs, table health.

Nothing here is timed as pgbatch work. Its SQL lives in ``benchmarks/sql/helpers.sql``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgbatch.client import migrate_with_new_connection
from pgbatch.queries import parse_named_queries

SQL_DIR = Path(__file__).with_name("sql")
QUEUE_NAME = "bench"


@cache
def _helper_templates() -> dict[str, str]:
    return parse_named_queries((SQL_DIR / "helpers.sql").read_text(encoding="utf-8"))


def helper(name: str, schema: str = "public") -> bytes:
    """A helper statement rendered for ``schema`` (identifiers quoted by psycopg.sql)."""
    schema_id = sql.Identifier(schema)
    qualified = schema_id.as_string(None)
    composed = sql.SQL(_helper_templates()[name]).format(
        schema=schema_id,
        message_id_seq=sql.Literal(f"{qualified}.message_id_seq"),
        lease_token_seq=sql.Literal(f"{qualified}.lease_token_seq"),
    )
    return composed.as_string(None).encode()


def connect(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True, application_name="pgbatch-bench")


def scalar(dsn: str, statement: bytes, params: dict[str, Any] | None = None) -> Any:
    with connect(dsn) as conn:
        row = conn.execute(statement, params).fetchone()
    return None if row is None else row[0]


@contextlib.contextmanager
def fresh_schema(dsn: str, prefix: str) -> Iterator[str]:
    """A newly migrated pgbatch schema (named bench_<prefix>_...), dropped afterwards."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:10]}"
    migrate_with_new_connection(dsn, name)
    try:
        yield name
    finally:
        with connect(dsn) as conn:
            conn.execute(helper("schema_drop", name))


def create_bench_queue(dsn: str, schema: str, **settings: Any) -> int:
    """Creates the benchmark queue through pgbatch's API; its id."""
    import pgbatch

    with pgbatch.connect(dsn, schema=schema, min_size=1, max_size=1) as client:
        return client.create_queue(QUEUE_NAME, **settings).info.id


def fill_backlog(dsn: str, schema: str, queue_id: int, count: int, *, packs: bool = False) -> None:
    """``count`` ready messages, then VACUUM ANALYZE so every run starts from the same state.
    With ``packs``, stored as batch_enqueue stores a plain batch (migration 0005); else one
    per row, as the naive loop of limit (b) and pgbatch's per-message path have them."""
    with connect(dsn) as conn:
        if packs:
            from pgbatch.operations import PACK_SIZE

            params = {"queue_id": queue_id, "count": count, "pack": PACK_SIZE}
            conn.execute(helper("pack_backlog_insert", schema), params)
        else:
            conn.execute(helper("backlog_insert", schema), {"queue_id": queue_id, "count": count})
        table = sql.Identifier(schema, "message_pack" if packs else "message")
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(table))


def count(dsn: str, schema: str, what: str) -> int:
    """Rows left in ``message``, messages still queued (``queued``: alone or in packs), or
    rows written to ``archive``."""
    return int(scalar(dsn, helper(f"{what}_count", schema)))


@dataclass(frozen=True, slots=True)
class TableHealth:
    table: str
    live_tuples: int
    dead_tuples: int
    vacuums: int
    table_bytes: int
    index_bytes: int
    total_bytes: int


def table_health(dsn: str, schema: str) -> tuple[list[TableHealth], dict[str, int]]:
    """Per-table tuples and sizes from pg_stat_user_tables, and the hot table's index sizes."""
    with connect(dsn) as conn:
        tables = [
            TableHealth(*row)
            for row in conn.execute(helper("table_health"), {"schema_name": schema})
        ]
        indexes = dict(conn.execute(helper("index_sizes"), {"schema_name": schema}).fetchall())
    return tables, {str(k): int(v) for k, v in indexes.items()}


class ArchiveWatcher:
    """Polls the archive's row count, or the queue's, on one connection, to time when work
    is done."""

    def __init__(self, dsn: str, schema: str, interval: float = 0.01) -> None:
        self.conn = connect(dsn)
        self.statement = helper("archive_count", schema)
        self.queued = helper("queued_count", schema)
        self.interval = interval

    def __enter__(self) -> ArchiveWatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.conn.close()

    def wait_for(self, count: int, timeout: float) -> float:
        """The wall-clock time at which the archive was first seen holding ``count`` rows."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.conn.execute(self.statement).fetchone()
            if row is not None and int(row[0]) >= count:
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the archive did not reach {count} rows in {timeout} s")
            time.sleep(self.interval)

    def wait_until_drained(self, timeout: float) -> float:
        """The wall-clock time at which the queue was first seen empty (every message
        archived, for a no-op handler). Counting the archive instead reads all of it at each
        poll: in the churn scenario a growing million rows every 20 ms, whose server CPU
        slowed each tenth more than the last (2026-11-30: 85k down to 64k msg/s)."""
        deadline = time.monotonic() + timeout
        while True:
            row = self.conn.execute(self.queued).fetchone()
            if row is not None and int(row[0]) == 0:
                return time.time()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the queue was not drained in {timeout} s")
            time.sleep(self.interval)
