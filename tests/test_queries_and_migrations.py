"""The named SQL and the migrations: every query prepares and is used, migrations are
idempotent and deterministic, and the wheel ships the SQL.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import pgbatch
from pgbatch.client import migrate_with_new_connection
from pgbatch.migrate import available_migrations
from pgbatch.queries import query_templates

PACKAGE_DIR = Path(pgbatch.__file__).parent
PROJECT_DIR = PACKAGE_DIR.parent
QUERY_NAMES = sorted(query_templates())
# psycopg placeholders: %(name)s (also %(name)b / %(name)t), the escaped %%, and positional %s.
PLACEHOLDER = re.compile(r"%\((\w+)\)[sbt]|%%|%[sbt]")


def as_server_statement(query: str) -> str:
    """The query as psycopg sends it: named placeholders as $1..$n (one per distinct name)."""
    names: list[str] = []

    def replace(match: re.Match[str]) -> str:
        if match[0] == "%%":
            return "%"
        if match[1] is None:
            raise AssertionError(f"positional placeholder {match[0]!r}: use %(name)s")
        if match[1] not in names:
            names.append(match[1])
        return f"${names.index(match[1]) + 1}"

    return PLACEHOLDER.sub(replace, query)


# --- every named query prepares --------------------------------------------------------------


def test_the_query_files_hold_queries() -> None:
    files = sorted((PACKAGE_DIR / "sql" / "queries").glob("*.sql"))
    assert files, "no query files shipped"
    for path in files:
        headers = re.findall(r"^-- name: (\w+)\s*$", path.read_text(), re.MULTILINE)
        assert headers, f"{path.name} has no named query"
        assert set(headers) <= set(QUERY_NAMES)
    assert len(QUERY_NAMES) >= 20


def test_query_names_follow_entity_verb(client: pgbatch.Client) -> None:
    assert client.queries.names() == QUERY_NAMES
    bad = [name for name in QUERY_NAMES if not re.fullmatch(r"[a-z]+(_[a-z0-9]+)+", name)]
    assert bad == []


@pytest.mark.parametrize("name", QUERY_NAMES)
def test_named_query_prepares_against_a_migrated_schema(client: pgbatch.Client, name: str) -> None:
    query = with_runtime_identifiers(getattr(client.queries, name).decode(), client.schema)
    assert client.schema in query or "{schema}" not in query_templates()[name]
    statement = f"pgbatch_check_{name}"
    if without_leading_comments(query).upper().startswith("VACUUM"):
        with client.db.connection() as conn:  # VACUUM refuses a transaction block; harmless
            conn.execute(query)
        return
    with client.db.connection() as conn, conn.transaction(force_rollback=True):
        if not PREPARABLE.match(without_leading_comments(query)):
            run_utility_statement(conn, query)
            return
        conn.execute(f"PREPARE {statement} AS {as_server_statement(query)}")
        row = conn.execute(
            "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = %s",
            (statement,),
        ).fetchone()
        conn.execute(f"DEALLOCATE {statement}")
    assert row is not None
    placeholders = {m[1] for m in PLACEHOLDER.finditer(query) if m[1]}
    assert len(row[0]) == len(placeholders)  # every parameter got a type from its context


# Statements PREPARE accepts; others (COPY, DROP...) are run, inside a rolled-back transaction.
PREPARABLE = re.compile(r"(SELECT|INSERT|UPDATE|DELETE|WITH|VALUES|MERGE|TABLE)\b", re.I)
# Identifiers some queries take at run time ({partition}), with a real relation to stand in.
RUNTIME_IDENTIFIERS = {"partition": "archive_default"}


def without_leading_comments(query: str) -> str:
    return re.sub(r"^(\s*--[^\n]*\n)*\s*", "", query)


def with_runtime_identifiers(query: str, schema: str) -> str:
    wanted = set(re.findall(r"\{(\w+)\}", query))
    unknown = sorted(wanted - RUNTIME_IDENTIFIERS.keys())
    assert unknown == [], f"add a stand-in relation for run-time identifiers {unknown}"
    if not wanted:
        return query
    stand_ins = {key: sql.Identifier(schema, RUNTIME_IDENTIFIERS[key]) for key in wanted}
    return sql.SQL(query).format(**stand_ins).as_string(None)


def run_utility_statement(conn: psycopg.Connection[Any], query: str) -> None:
    """Parses and checks a statement PREPARE refuses, by running it (the caller rolls back)."""
    assert PLACEHOLDER.search(query) is None, "a utility statement cannot take parameters"
    if without_leading_comments(query).upper().startswith("COPY"):
        with conn.cursor() as cur, cur.copy(query):
            pass  # no rows: parsed and checked all the same
    else:
        conn.execute(query)


def test_as_server_statement_numbers_each_name_once() -> None:
    converted = as_server_statement("SELECT %(a)s, %(b)s, %(a)s, 'x%%'")
    assert converted == "SELECT $1, $2, $1, 'x%'"
    with pytest.raises(AssertionError):
        as_server_statement("SELECT %s")


# --- every named query is used ---------------------------------------------------------------


def package_sources() -> dict[Path, str]:
    return {
        path: path.read_text(encoding="utf-8")
        for path in PACKAGE_DIR.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_every_named_query_is_used_somewhere_in_the_package() -> None:
    """Checks the whole package as it is now, worker, CLI and maintenance included."""
    sources = "\n".join(package_sources().values())
    unused = [name for name in QUERY_NAMES if not re.search(rf"\b{name}\b", sources)]
    assert unused == [], f"named queries defined but used nowhere in pgbatch/: {unused}"


def test_code_asks_only_for_queries_that_exist() -> None:
    """A statement looked up by name (``queries.x``, ``q.x``, ``_q().x``) must exist in sql/.

    ``q`` is also a common name for other objects, so only names starting with one of the
    queries' entities (``message_``, ``queue_``...) count as lookups.
    """
    entities = "|".join(sorted({name.split("_")[0] for name in QUERY_NAMES}))
    lookup = re.compile(rf"\b(?:queries|_?q\(\)|q)\.((?:{entities})_[a-z0-9_]+)\b")
    asked = {name for text in package_sources().values() for name in lookup.findall(text)}
    assert len(asked) >= 10, "found few query lookups: the pattern is out of date"
    assert sorted(asked - set(QUERY_NAMES)) == []


# --- migrations ------------------------------------------------------------------------------


@pytest.fixture
def fresh_schema_name(pg_dsn: str) -> Iterator[str]:
    name = f"t_fresh_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def test_migrations_are_numbered_without_gaps() -> None:
    versions = [m.version for m in available_migrations()]
    assert versions == list(range(1, len(versions) + 1))
    shipped = sorted(p.name for p in (PACKAGE_DIR / "sql" / "migrations").glob("*.sql"))
    assert len(shipped) == len(versions)  # no file the loader silently ignores


def test_migrations_from_zero_twice_are_idempotent(pg_dsn: str, fresh_schema_name: str) -> None:
    every_version = [m.version for m in available_migrations()]
    assert migrate_with_new_connection(pg_dsn, fresh_schema_name) == every_version
    first = schema_snapshot(pg_dsn, fresh_schema_name)
    assert migrate_with_new_connection(pg_dsn, fresh_schema_name) == []
    with pgbatch.connect(pg_dsn, schema=fresh_schema_name, max_size=1) as client:
        assert client.migrate() == []
    assert schema_snapshot(pg_dsn, fresh_schema_name) == first
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT version FROM {} ORDER BY version").format(
                sql.Identifier(fresh_schema_name, "schema_migration")
            )
        ).fetchall()
    assert [row[0] for row in rows] == every_version


def test_a_second_fresh_migrate_produces_the_same_schema(
    pg_dsn: str, schema: str, fresh_schema_name: str
) -> None:
    with pgbatch.connect(pg_dsn, schema=fresh_schema_name, max_size=1) as client:
        client.migrate()  # through the pool, where the fixture used a plain connection
    expected = schema_snapshot(pg_dsn, schema)
    assert schema_snapshot(pg_dsn, fresh_schema_name) == expected
    tables = {table for table, *_ in expected["columns"]}
    assert {"queue", "message", "archive", "dead_letter", "schema_migration"} <= tables
    assert any(index[1] == "message_dequeue_idx" for index in expected["indexes"])


def test_migrations_leave_nothing_outside_their_schema(pg_dsn: str, fresh_schema_name: str) -> None:
    before = objects_outside(pg_dsn, fresh_schema_name)
    migrate_with_new_connection(pg_dsn, fresh_schema_name)
    assert objects_outside(pg_dsn, fresh_schema_name) == before


def objects_outside(dsn: str, schema: str) -> list[tuple[str, str]]:
    """Objects in public: a migration that forgot search_path would create them there."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT c.relname, c.relkind::text FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            " UNION ALL SELECT p.proname, 'f' FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
            " ORDER BY 1, 2"
        ).fetchall()
    return [(str(name), str(kind)) for name, kind in rows]


def schema_snapshot(dsn: str, schema: str) -> dict[str, list[tuple[Any, ...]]]:
    """What a schema consists of, with its own name and dated partition names made neutral."""
    queries = {
        "columns": "SELECT table_name, column_name, ordinal_position, data_type, udt_name,"
        " is_nullable, column_default, is_identity, character_maximum_length"
        " FROM information_schema.columns WHERE table_schema = %(schema)s",
        "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = %(schema)s",
        "constraints": "SELECT c.relname, k.conname, k.contype::text,"
        " pg_get_constraintdef(k.oid) FROM pg_constraint k"
        " JOIN pg_class c ON c.oid = k.conrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s",
        "relations": "SELECT c.relname, c.relkind::text, c.reloptions::text,"
        " c.relpersistence::text, pg_get_partkeydef(c.oid),"
        " pg_get_expr(c.relpartbound, c.oid) IS NOT NULL FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s",
        "sequences": "SELECT sequencename, data_type::text, start_value, increment_by,"
        " cache_size, cycle FROM pg_sequences WHERE schemaname = %(schema)s",
        "functions": "SELECT p.proname, pg_get_function_identity_arguments(p.oid),"
        " pg_get_functiondef(p.oid) FROM pg_proc p"
        " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = %(schema)s",
        "triggers": "SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t"
        " JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND NOT t.tgisinternal",
    }
    snapshot: dict[str, list[tuple[Any, ...]]] = {}
    with psycopg.connect(dsn) as conn:
        for part, query in queries.items():
            rows = conn.execute(query, {"schema": schema}).fetchall()
            snapshot[part] = sorted(tuple(neutral(value, schema) for value in row) for row in rows)
    return snapshot


def neutral(value: Any, schema: str) -> Any:
    if not isinstance(value, str):
        return value
    return re.sub(r"archive_p\d{8}", "archive_pDAY", value.replace(schema, "<schema>"))


# --- the wheel ships the SQL -----------------------------------------------------------------


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built from a copy of the project, so the checkout gets no build/ or egg-info."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"):
        if (PROJECT_DIR / name).exists():
            shutil.copy2(PROJECT_DIR / name, source / name)
    shutil.copytree(
        PACKAGE_DIR, source / "pgbatch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    out = tmp_path_factory.mktemp("wheel")
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"pip wheel failed:\n{result.stdout}\n{result.stderr}"
    print(f"wheel built in {time.monotonic() - started:.1f} s")
    [wheel] = out.glob("pgbatch-*.whl")
    return wheel


def test_the_wheel_contains_every_migration_and_query_file(built_wheel: Path) -> None:
    names = set(zipfile.ZipFile(built_wheel).namelist())
    for folder in ("migrations", "queries"):
        shipped = sorted(p.name for p in (PACKAGE_DIR / "sql" / folder).glob("*.sql"))
        assert shipped
        in_wheel = sorted(
            Path(n).name
            for n in names
            if n.startswith(f"pgbatch/sql/{folder}/") and n.endswith(".sql")
        )
        assert in_wheel == shipped
    assert "pgbatch/py.typed" in names


def test_the_installed_wheel_loads_its_queries_and_migrations(
    built_wheel: Path, tmp_path: Path
) -> None:
    unpacked = tmp_path / "site"
    zipfile.ZipFile(built_wheel).extractall(unpacked)
    probe = (
        "import json, pgbatch; from pgbatch.queries import query_templates;"
        " from pgbatch.migrate import available_migrations;"
        " print(json.dumps([pgbatch.__file__, sorted(query_templates()),"
        " [m.version for m in available_migrations()]]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    location, names, versions = json.loads(result.stdout)
    assert Path(location).is_relative_to(unpacked)  # the wheel's copy, not the checkout
    assert names == QUERY_NAMES
    assert versions == [m.version for m in available_migrations()]
