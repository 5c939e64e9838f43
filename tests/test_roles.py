"""Least-privilege roles: each group role can do its part and is refused the rest (42501).

Each test gets throwaway group roles (a unique prefix) and one login role per group, with a
random password so the tests work under trust and password authentication alike.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgbatch
from pgbatch import errors
from pgbatch.roles import ROLE_KINDS, create_roles, role_names


@dataclass
class Logins:
    """A DSN per role kind, each for a login role granted that kind's group role."""

    prefix: str
    schema: str
    dsn: dict[str, str]

    def connect(self, kind: str) -> pgbatch.Client:
        return pgbatch.connect(self.dsn[kind], schema=self.schema, max_size=2)


def _drop_roles(admin: psycopg.Connection[Any], roles: list[str]) -> None:
    for role in roles:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists:
            # Objects go back to the test's superuser so the schema fixture can drop them.
            admin.execute(
                sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role))
            )
            admin.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


@pytest.fixture
def prefix(pg_dsn: str) -> Iterator[str]:
    """A unique role prefix; every role it names is dropped after the test."""
    value = f"t{uuid.uuid4().hex[:10]}"
    yield value
    groups = list(role_names(value).values())
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        _drop_roles(admin, [f"{group}_login" for group in groups] + groups)


@pytest.fixture
def logins(pg_dsn: str, schema: str, client: pgbatch.Client, prefix: str) -> Logins:
    jobs = client.create_queue("jobs", max_attempts=2, backoff_base=0)
    jobs.batch_enqueue([{"seed": i} for i in range(3)])
    create_roles(client, prefix=prefix)
    dsn = {}
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        for kind, group in role_names(prefix).items():
            password = secrets.token_hex(16)
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(f"{group}_login"), sql.Literal(password), sql.Identifier(group)
                )
            )
            dsn[kind] = make_conninfo(pg_dsn, user=f"{group}_login", password=password)
    return Logins(prefix, schema, dsn)


def assert_refused(call: Callable[[], object]) -> errors.DatabaseError:
    """The call fails with insufficient privilege, surfaced as a non-retryable DatabaseError."""
    with pytest.raises(errors.DatabaseError) as caught:
        call()
    assert "[42501]" in str(caught.value)
    assert not isinstance(caught.value, errors.RetryableDatabaseError)
    return caught.value


def raw_refused(dsn: str, statement: sql.Composed | sql.SQL) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn, pytest.raises(psycopg.Error) as caught:
        conn.execute(statement)
    assert caught.value.sqlstate == "42501"


def table(schema: str, name: str) -> sql.Identifier:
    return sql.Identifier(schema, name)


def test_create_roles_returns_the_four_nologin_group_roles(pg_dsn, client, prefix):
    names = create_roles(client, prefix=prefix)
    assert names == [f"{prefix}_{kind}" for kind in ROLE_KINDS]
    with psycopg.connect(pg_dsn) as admin:
        rows = admin.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole FROM pg_roles"
            " WHERE rolname = ANY(%s) ORDER BY rolname",
            (names,),
        ).fetchall()
        owner = admin.execute(
            "SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s",
            (client.schema,),
        ).fetchone()
    assert rows == [(name, False, False, False) for name in sorted(names)]
    assert owner == (f"{prefix}_owner",)


def test_producer_enqueues_and_is_refused_everything_else(logins, schema):
    with logins.connect("producer") as producer:
        jobs = producer.queue("jobs")
        copied = jobs.batch_enqueue([{"n": i} for i in range(100)])  # COPY path
        first = jobs.enqueue({"k": 1}, dedup_key="once", priority=2)
        assert jobs.enqueue({"k": 2}, dedup_key="once") == first  # dedup hit, existing id
        assert jobs.enqueue({"k": 3}, delay=60) > first
        with producer.db.connection() as conn, conn.transaction():
            jobs.batch_enqueue([{"in_tx": True}], conn=conn)
        assert len(copied) == 100
        assert_refused(lambda: jobs.dequeue_many(1))
        assert_refused(lambda: jobs.stats())
        assert_refused(lambda: jobs.dead_letters())
        assert_refused(lambda: jobs.purge())
        assert_refused(lambda: producer.create_queue("other"))
        assert_refused(lambda: producer.drop_queue("jobs"))
    raw_refused(
        logins.dsn["producer"],
        sql.SQL("SELECT payload FROM {}").format(table(schema, "message")),
    )


def test_worker_processes_messages_and_cannot_enqueue_or_administer(logins, schema, client):
    with logins.connect("worker") as worker:
        jobs = worker.queue("jobs")
        held = jobs.dequeue_many(3, lease_seconds=30)
        assert [m.payload for m in held] == [{"seed": 0}, {"seed": 1}, {"seed": 2}]
        assert sorted(jobs.extend_lease(held, seconds=60)) == [m.id for m in held]
        assert jobs.archive_many(held[:1]) == [held[0].id]
        assert jobs.release_many(held[1:2]) == [held[1].id]
        assert jobs.fail_many(held[2:], "boom", delay=0).retried == [held[2].id]
        # Second delivery of each remaining message exhausts max_attempts=2: dead letters.
        again = jobs.dequeue_many(3)
        outcome = jobs.fail_many(again, "boom again")
        assert sorted(outcome.dead + outcome.retried) == sorted(m.id for m in again)
        assert outcome.dead
        assert_refused(lambda: jobs.enqueue({"x": 1}))
        assert_refused(lambda: jobs.requeue_dead())
        assert_refused(lambda: jobs.purge_dead())
        assert_refused(lambda: worker.create_queue("other"))
        assert_refused(lambda: worker.drop_queue("jobs"))
    stats = client.queue("jobs").stats()
    assert (stats.archived, stats.dead) == (1, len(outcome.dead))
    raw_refused(
        logins.dsn["worker"],
        sql.SQL("ALTER TABLE {} SET (fillfactor = 50)").format(table(schema, "message")),
    )
    raw_refused(
        logins.dsn["worker"],
        sql.SQL("SELECT payload FROM {}").format(table(schema, "archive")),
    )


def test_reader_sees_counts_but_no_payload_and_changes_nothing(logins, schema):
    with logins.connect("reader") as reader:
        jobs = reader.queue("jobs")
        stats = jobs.stats()
        assert (stats.ready, stats.leased, stats.archived) == (3, 0, 0)
        assert [q.name for q in reader.queues()] == ["jobs"]
        assert_refused(lambda: jobs.enqueue({"x": 1}))
        assert_refused(lambda: jobs.dequeue_many(1))
        assert_refused(lambda: jobs.dead_letters())
        assert_refused(lambda: reader.pause_queue("jobs"))
    for private in ("payload", "dedup_key", "last_error"):
        raw_refused(
            logins.dsn["reader"],
            sql.SQL("SELECT {} FROM {}").format(sql.Identifier(private), table(schema, "message")),
        )
    raw_refused(
        logins.dsn["reader"],
        sql.SQL("SELECT result FROM {}").format(table(schema, "archive")),
    )


PACK_FUNCTIONS = (
    "message_pack_take(1, 100, 424242, 3600, 'x', '{}')",
    "message_pack_unpack('{1}', '{1}')",
)


@pytest.mark.parametrize("kind", ["reader", "producer"])
@pytest.mark.parametrize("call", PACK_FUNCTIONS, ids=["take", "unpack"])
def test_only_the_worker_may_call_the_packs_functions(logins, schema, client, kind, call):
    """They run as the owner (migration 0005): EXECUTE is not PUBLIC's (migration 0006)."""
    client.queue("jobs").batch_enqueue([{"packed": i} for i in range(100)])
    raw_refused(
        logins.dsn[kind],
        sql.SQL("SELECT * FROM {}.").format(sql.Identifier(schema)) + sql.SQL(call),
    )
    with logins.connect("worker") as worker:
        held = worker.queue("jobs").dequeue_many(103)
        assert len(held) == 103 and {m.pack_id for m in held} - {None}


def test_a_callers_temporary_tables_do_not_stand_in_for_the_schemas(logins, schema, client):
    """A temporary "message_pack" of the caller's is not what the owner's function reads: the
    functions' search_path names pg_temp last (migration 0006). Before, it was searched first,
    and a worker could write forged messages into "message" through message_pack_unpack."""
    jobs = client.queue("jobs")
    forged = 900_001
    with psycopg.connect(logins.dsn["worker"], autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE TEMP TABLE message_pack (LIKE {} INCLUDING DEFAULTS)").format(
                table(schema, "message_pack")
            )
        )
        conn.execute("GRANT ALL ON pg_temp.message_pack TO PUBLIC")  # the owner may read it
        conn.execute(
            "INSERT INTO pg_temp.message_pack (id, queue_id, lease_token, ids, payloads)"
            " VALUES (%s, %s, 77, ARRAY[%s::bigint], '[{\"forged\": true}]')",
            (forged, jobs.info.id, forged),
        )
        moved = conn.execute(
            sql.SQL("SELECT {}(ARRAY[%s::bigint], ARRAY[77::bigint])").format(
                sql.Identifier(schema, "message_pack_unpack")
            ),
            (forged,),
        ).fetchone()
    assert moved == (0,)
    with client.db.connection() as conn:
        found = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE id = %s").format(table(schema, "message")),
            (forged,),
        ).fetchone()
    assert found == (0,)


def test_owner_migrates_and_administers_its_schema_only(logins, schema, pg_dsn):
    with logins.connect("owner") as owner:
        assert owner.migrate() == []  # already current; runs as a non-superuser
        other = owner.create_queue("other", max_attempts=1)
        other.enqueue({"x": 1})
        other.fail_many(other.dequeue_many(1), "dead at once")
        assert other.requeue_dead() == 1
        assert other.purge() == 1
        owner.drop_queue("other")
        with owner.db.connection() as conn:
            conn.execute(
                sql.SQL("ALTER TABLE {} SET (fillfactor = 80)").format(table(schema, "message"))
            )
    raw_refused(logins.dsn["owner"], sql.SQL("CREATE TABLE public.pgbatch_roles_probe (x int)"))
    foreign = sql.Identifier(f"f_{uuid.uuid4().hex[:12]}")
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(foreign))
        admin.execute(sql.SQL("CREATE TABLE {}.t (x int)").format(foreign))
        try:
            raw_refused(logins.dsn["owner"], sql.SQL("SELECT * FROM {}.t").format(foreign))
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(foreign))


def _privileges(pg_dsn: str, roles: list[str]) -> set[tuple[str, ...]]:
    with psycopg.connect(pg_dsn) as admin:
        tables = admin.execute(
            "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = ANY(%s)",
            (roles,),
        ).fetchall()
        columns = admin.execute(
            "SELECT grantee, table_name || '.' || column_name, privilege_type"
            " FROM information_schema.column_privileges WHERE grantee = ANY(%s)",
            (roles,),
        ).fetchall()
    return set(tables) | set(columns)


def test_rerun_converges_and_takes_back_extra_grants(pg_dsn, schema, client, prefix):
    names = create_roles(client, prefix=prefix)
    before = _privileges(pg_dsn, names)
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            sql.SQL("GRANT DELETE, TRUNCATE ON {} TO {}").format(
                table(schema, "message"), sql.Identifier(f"{prefix}_producer")
            )
        )
    assert _privileges(pg_dsn, names) != before
    assert create_roles(client, prefix=prefix) == names
    assert _privileges(pg_dsn, names) == before
    assert (f"{prefix}_producer", "message", "DELETE") not in before


def test_an_existing_login_role_of_that_name_is_refused(pg_dsn, client, prefix):
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(f"{prefix}_worker")))
    with pytest.raises(errors.ConfigurationError, match="can log in"):
        create_roles(client, prefix=prefix)
    with psycopg.connect(pg_dsn) as admin:
        created = admin.execute(
            "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)",
            ([f"{prefix}_owner", f"{prefix}_producer", f"{prefix}_reader"],),
        ).fetchone()
    assert created == (0,)  # one transaction: nothing was left half-made


@pytest.mark.parametrize("bad", ["", "Upper", "1digit", 'x"; DROP ROLE postgres; --', "a" * 55])
def test_invalid_prefixes_are_rejected_before_any_sql(client, bad):
    with pytest.raises(errors.InvalidArgument, match="invalid role prefix"):
        create_roles(client, prefix=bad)


def test_the_worker_runtime_runs_as_the_worker_role(logins: Logins) -> None:
    app = pgbatch.App(logins.dsn["worker"], schema=logins.schema)
    seen: list[int] = []

    @app.batch_handler("jobs", batch_size=10)
    def handle(batch: pgbatch.Batch[Any]) -> None:
        seen.extend(m.id for m in batch)

    report = app.run_worker(until_empty=True, install_signal_handlers=False)
    assert report.archived == 3 and len(seen) == 3


def test_the_reader_can_check_health(logins: Logins) -> None:
    from pgbatch import maintenance

    with logins.connect("reader") as reader:
        health = maintenance.health(reader)
    assert health.live_tuples >= 0 and health.table_bytes > 0


def test_a_producer_submits_and_awaits_results_a_worker_role_completes(logins: Logins) -> None:
    app = pgbatch.App(logins.dsn["worker"], schema=logins.schema)

    @app.batch_handler("jobs", batch_size=10)
    def handle(batch: pgbatch.Batch[Any]) -> None:
        for message in batch:
            batch.complete(message, {"doubled": 2 * message.payload.get("n", 0)})

    with logins.connect("producer") as producer:
        jobs = producer.queue("jobs")
        pending = [jobs.submit({"n": n}) for n in (1, 2, 3)]
        ids = [p.id(timeout=10) for p in pending]
        app.run_worker(until_empty=True, install_signal_handlers=False)
        assert [p.result(timeout=10) for p in pending] == [
            {"doubled": 2},
            {"doubled": 4},
            {"doubled": 6},
        ]
        assert jobs.result(ids[0], timeout=5) == {"doubled": 2}
