"""Bad input on a real PostgreSQL: a typed ``pgbatch.errors`` error, and nothing written."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg import sql

import pgbatch
from pgbatch import errors

SECRET = "s3cret"
UNREACHABLE_DSNS = [
    f"postgresql://u:{SECRET}@127.0.0.1:1/db",
    f"host=127.0.0.1 port=1 user=u password={SECRET} dbname=db",
]
UNPARSABLE_DSNS = [
    f"postgresql://u:{SECRET}@db.example:notaport/db",
    f"postgresql://u:{SECRET}@db.example:99999/db",
    f"host=db.example password='{SECRET}",  # unterminated quote
    f"host=db.example {SECRET}",  # a word without '='
    f"postgresql+psycopg://u:{SECRET}@db.example/db",  # a SQLAlchemy URL
]


class Signup(pydantic.BaseModel):
    email: str
    age: int


class Address(pydantic.BaseModel):
    city: str


class Customer(pydantic.BaseModel):
    name: str
    address: Address


def row_counts(client: pgbatch.Client) -> dict[str, int]:
    """Rows in every table a queue operation may write, read straight from the schema."""
    counts = {}
    with client.db.connection() as conn:
        for table in ("queue", "message", "message_pack", "archive", "dead_letter"):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(client.schema, table))
            row = conn.execute(query).fetchone()
            assert row is not None
            counts[table] = row[0]
    return counts


def assert_nothing_written(queue: pgbatch.Queue[Any], before: dict[str, int]) -> None:
    assert row_counts(queue.client) == before
    stats = queue.stats()
    assert (stats.ready, stats.leased, stats.delayed, stats.archived, stats.dead) == (0,) * 5


def error_texts(exc: BaseException) -> str:
    """The text of an error and of every error shown with it in a traceback."""
    texts = []
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen), *(str(arg) for arg in seen.args)]
        # What traceback printing (and error trackers) follow: `raise ... from None` hides
        # the context on purpose.
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)
    return "\n".join(texts)


# --- queue names ----------------------------------------------------------------------------

BAD_NAMES = [
    "",
    "q" * 64,
    "1jobs",
    "9",
    'jo"bs',
    "jo'bs",
    "jo bs",
    " jobs",
    "jobs;",
    "jo;bs",
    '"; DROP TABLE message; --',
    "jobs\x00",
    "jobs\n",
    "j\u00f6bs",
]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_invalid_queue_names_are_refused_everywhere_and_write_nothing(
    client: pgbatch.Client, name: str
) -> None:
    before = row_counts(client)
    calls: list[Callable[[], object]] = [
        lambda: client.create_queue(name),
        lambda: client.queue(name),
        lambda: client.pause_queue(name),
        lambda: client.resume_queue(name),
        lambda: client.drop_queue(name),
    ]
    for call in calls:
        with pytest.raises(errors.InvalidQueueName) as caught:
            call()
        assert repr(name) in str(caught.value)
    assert row_counts(client) == before
    assert client.queues() == []


def test_non_string_queue_name_is_an_invalid_queue_name(client: pgbatch.Client) -> None:
    with pytest.raises(errors.InvalidQueueName):
        client.create_queue(42)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["a", "_", "q" * 63, "Emails_2.high:eu-west-1"])
def test_the_longest_and_oddest_valid_names_work_end_to_end(
    client: pgbatch.Client, name: str
) -> None:
    queue = client.create_queue(name)
    [message_id] = queue.batch_enqueue([{"ok": True}])
    assert [m.id for m in client.queue(name).dequeue_many(5)] == [message_id]
    assert [q.name for q in client.queues()] == [name]


def test_the_sql_injection_name_left_every_table_in_place(client: pgbatch.Client) -> None:
    with pytest.raises(errors.InvalidQueueName):
        client.create_queue('x"; DROP TABLE message; --')
    queue = client.create_queue("after")
    queue.enqueue({"still": "works"})
    assert queue.stats().ready == 1


# --- unknown queues -------------------------------------------------------------------------


def test_unknown_queue_raises_queue_not_found(client: pgbatch.Client) -> None:
    client.create_queue("known")
    before = row_counts(client)
    for call in (
        lambda: client.queue("unknown"),
        lambda: client.pause_queue("unknown"),
        lambda: client.resume_queue("unknown"),
        lambda: client.drop_queue("unknown"),
    ):
        with pytest.raises(errors.QueueNotFound) as caught:
            call()
        assert "unknown" in str(caught.value)
    assert row_counts(client) == before


def test_queue_not_found_is_also_a_lookup_error(client: pgbatch.Client) -> None:
    with pytest.raises(LookupError):
        client.queue("nowhere")


# --- payloads that fail their model ---------------------------------------------------------


@pytest.mark.parametrize("size", [5, 200], ids=["insert-path", "copy-path"])
def test_model_failure_mid_batch_names_index_and_field_and_writes_nothing(
    client: pgbatch.Client, size: int
) -> None:
    queue = client.create_queue("signups", model=Signup)
    before = row_counts(client)
    bad_at = size // 2 + 1
    payloads: list[Any] = [{"email": f"u{i}@x.org", "age": i} for i in range(size)]
    payloads[bad_at] = {"email": "bad@x.org", "age": "not a number"}
    with pytest.raises(errors.PayloadValidationError) as caught:
        queue.batch_enqueue(payloads)
    assert caught.value.index == bad_at
    assert caught.value.fields == ("age",)
    assert f"index {bad_at}" in str(caught.value) and "age" in str(caught.value)
    assert_nothing_written(queue, before)


def test_model_failure_names_a_nested_and_a_missing_field(client: pgbatch.Client) -> None:
    queue = client.create_queue("customers", model=Customer)
    before = row_counts(client)
    good = {"name": "ada", "address": {"city": "London"}}
    with pytest.raises(errors.PayloadValidationError) as caught:
        queue.batch_enqueue([good, good, {"name": "bob", "address": {}}])
    assert caught.value.index == 2
    assert caught.value.fields == ("address.city",)
    assert "address.city" in str(caught.value)
    with pytest.raises(errors.PayloadValidationError) as caught:
        queue.enqueue({"address": {"city": "Paris"}})
    assert caught.value.index == 0 and caught.value.fields == ("name",)
    assert_nothing_written(queue, before)


# --- payloads that are not JSON -------------------------------------------------------------

NOT_JSON: dict[str, Any] = {
    "object": object(),
    "set": {1, 2},
    "nan": float("nan"),
    "infinity": float("inf"),
    "minus-infinity-nested": {"a": [1, {"b": float("-inf")}]},
    "nan-beside-null": {"a": None, "b": float("nan")},
    "nul-in-value": {"text": "a\x00b"},
    "nul-in-key": {"a\x00": 1},
    "bytes": b"raw",
    "integer-beyond-64-bits": 2**70,
    "non-string-key": {1: "one"},
}


@pytest.mark.parametrize("size", [3, 150], ids=["insert-path", "copy-path"])
@pytest.mark.parametrize("kind", list(NOT_JSON))
def test_payload_that_is_not_json_raises_payload_not_json_and_writes_nothing(
    client: pgbatch.Client, kind: str, size: int
) -> None:
    queue = client.create_queue("jobs")
    before = row_counts(client)
    payloads: list[Any] = [{"i": i} for i in range(size)]
    payloads[size - 2] = NOT_JSON[kind]
    with pytest.raises(errors.PayloadNotJSON) as caught:
        queue.batch_enqueue(payloads)
    assert caught.value.index == size - 2
    assert f"index {size - 2}" in str(caught.value)
    assert_nothing_written(queue, before)


@pytest.mark.parametrize(
    "payload",
    [
        {"escaped": "\\u0000"},  # a backslash followed by "u0000": text, not a NUL
        {"escaped": "C:\\new\\u0000dir"},
        {"null": None, "list": [None, 0.0, -0.0, 1e308]},
        {"nearly-nul": "\x01\x1f\u2028\ufeff"},
    ],
)
def test_json_that_merely_looks_suspicious_round_trips(
    client: pgbatch.Client, payload: Any
) -> None:
    queue = client.create_queue("jobs")
    for size in (1, 100):  # the insert and the COPY paths
        queue.batch_enqueue([payload] * size)
        got = queue.dequeue_many(size)
        assert [m.payload for m in got] == [payload] * size
        assert len(queue.archive_many(got)) == size


# --- payload size ---------------------------------------------------------------------------


def test_payload_above_the_default_limit_of_one_mib(client: pgbatch.Client) -> None:
    queue = client.create_queue("jobs")
    assert queue.info.max_payload_bytes == 1 << 20
    before = row_counts(client)
    big = "x" * (1 << 20)  # 1 MiB of text plus its two quotes
    with pytest.raises(errors.PayloadTooLarge) as caught:
        queue.batch_enqueue([{"small": 1}, big, {"small": 2}])
    assert caught.value.index == 1
    assert caught.value.size == (1 << 20) + 2 and caught.value.limit == 1 << 20
    assert_nothing_written(queue, before)


@pytest.mark.parametrize("size", [4, 100], ids=["insert-path", "copy-path"])
def test_payload_limit_is_configurable_per_queue_and_exact(
    client: pgbatch.Client, size: int
) -> None:
    queue = client.create_queue("tiny", max_payload_bytes=100)
    assert client.queue("tiny").info.max_payload_bytes == 100
    at_limit = "x" * 98  # JSON text of exactly 100 bytes with its quotes
    before = row_counts(client)
    with pytest.raises(errors.PayloadTooLarge) as caught:
        queue.batch_enqueue([at_limit] * (size - 1) + [at_limit + "x"])
    assert (caught.value.index, caught.value.size, caught.value.limit) == (size - 1, 101, 100)
    assert "101" in str(caught.value) and "100" in str(caught.value)
    assert_nothing_written(queue, before)
    assert len(queue.batch_enqueue([at_limit] * size)) == size


def test_payload_limit_applies_to_the_validated_model_payload(client: pgbatch.Client) -> None:
    queue = client.create_queue("typed-tiny", model=Signup, max_payload_bytes=60)
    queue.enqueue({"email": "a@x.org", "age": 1})
    with pytest.raises(errors.PayloadTooLarge):
        queue.enqueue({"email": "a" * 60 + "@x.org", "age": 1})
    assert queue.stats().ready == 1


# --- non-positive sizes, leases, attempts ---------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, True, 2.5, None])
def test_non_positive_or_non_integer_batch_size(client: pgbatch.Client, limit: Any) -> None:
    queue = client.create_queue("jobs")
    queue.batch_enqueue([{"i": i} for i in range(3)])
    with pytest.raises(errors.InvalidArgument):
        queue.dequeue_many(limit)
    assert (queue.stats().ready, queue.stats().leased) == (3, 0)


@pytest.mark.parametrize(
    "lease", [0, -5, timedelta(0), timedelta(seconds=-1), float("nan"), float("inf")]
)
def test_non_positive_or_non_finite_lease(client: pgbatch.Client, lease: Any) -> None:
    queue = client.create_queue("jobs")
    queue.batch_enqueue([{"i": 1}])
    with pytest.raises(errors.InvalidArgument):
        queue.dequeue_many(1, lease_seconds=lease)
    assert (queue.stats().ready, queue.stats().leased) == (1, 0)
    [message] = queue.dequeue_many(1)
    with pytest.raises(errors.InvalidArgument):
        queue.extend_lease([message], seconds=lease)
    assert queue.archive_many([message]) == [message.id]  # the lease was left as it was
    before = row_counts(client)
    with pytest.raises(errors.InvalidArgument):
        client.create_queue("other", lease_seconds=lease)
    assert row_counts(client) == before


@pytest.mark.parametrize("delay", [-1, timedelta(seconds=-0.5), float("nan"), float("inf")])
def test_negative_or_non_finite_delay_writes_nothing(client: pgbatch.Client, delay: Any) -> None:
    queue = client.create_queue("jobs")
    before = row_counts(client)
    with pytest.raises(errors.InvalidArgument):
        queue.enqueue({"x": 1}, delay=delay)
    assert_nothing_written(queue, before)
    queue.enqueue({"x": 1})
    [message] = queue.dequeue_many(1)
    with pytest.raises(errors.InvalidArgument):
        queue.fail_many([message], "boom", delay=delay)
    assert queue.stats().leased == 1  # still held: the failure was not recorded


@pytest.mark.parametrize(
    "settings",
    [
        {"max_attempts": 0},
        {"max_attempts": -3},
        {"max_attempts": 1.5},
        {"max_payload_bytes": 0},
        {"backoff_base": -1},
        {"backoff_max": float("nan")},
    ],
)
def test_bad_queue_settings_create_nothing(client: pgbatch.Client, settings: Any) -> None:
    before = row_counts(client)
    with pytest.raises(errors.InvalidArgument):
        client.create_queue("jobs", **settings)
    assert row_counts(client) == before
    assert client.queues() == []


def test_other_bad_arguments(client: pgbatch.Client) -> None:
    queue = client.create_queue("jobs")
    before = row_counts(client)
    with pytest.raises(errors.InvalidArgument):
        queue.enqueue({"x": 1}, priority=40000)
    with pytest.raises(errors.InvalidArgument):
        queue.batch_enqueue([{"x": 1}, {"x": 2}], dedup_keys=["only-one"])
    with pytest.raises(errors.InvalidArgument):
        queue.dead_letters(limit=0)
    assert_nothing_written(queue, before)
    queue.batch_enqueue([{"x": 1}, {"x": 2}])
    held = queue.dequeue_many(2)
    with pytest.raises(errors.InvalidArgument):
        queue.archive_many(held, results=[{"only": "one"}])
    with pytest.raises(errors.InvalidArgument):
        queue.fail_many(held, ["one error for two messages"])
    assert (queue.stats().leased, queue.stats().archived) == (2, 0)


def test_invalid_argument_is_also_a_value_error(client: pgbatch.Client) -> None:
    queue = client.create_queue("jobs")
    with pytest.raises(ValueError):
        queue.dequeue_many(0)


# --- unreachable and unparsable databases ---------------------------------------------------


@pytest.mark.parametrize("dsn", UNREACHABLE_DSNS, ids=["url", "keywords"])
def test_unreachable_database_fails_fast_naming_host_and_port_not_password(dsn: str) -> None:
    started = time.monotonic()
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        pgbatch.connect(dsn)
    assert time.monotonic() - started < 5
    assert "127.0.0.1:1" in str(caught.value)
    assert SECRET not in error_texts(caught.value)


@pytest.mark.parametrize("dsn", UNREACHABLE_DSNS, ids=["url", "keywords"])
async def test_unreachable_database_async(dsn: str) -> None:
    started = time.monotonic()
    with pytest.raises(errors.DatabaseUnavailable) as caught:
        async with pgbatch.connect_async(dsn):
            pass
    assert time.monotonic() - started < 5
    assert "127.0.0.1:1" in str(caught.value)
    assert SECRET not in error_texts(caught.value)


def test_wrong_password_is_not_echoed(pg_dsn: str) -> None:
    """A server that answers but refuses: the error never carries the password we sent."""
    dsn = psycopg.conninfo.make_conninfo(pg_dsn, user="pgbatch_no_such_role", password=SECRET)
    with pytest.raises(errors.DatabaseError) as caught:
        pgbatch.connect(dsn)
    assert SECRET not in error_texts(caught.value)


@pytest.mark.parametrize("dsn", UNPARSABLE_DSNS)
def test_unparsable_dsn_raises_invalid_dsn_without_the_password(dsn: str) -> None:
    with pytest.raises(errors.InvalidDSN) as caught:
        pgbatch.connect(dsn)
    assert SECRET not in error_texts(caught.value)
    with pytest.raises(errors.InvalidDSN) as caught:
        pgbatch.connect_async(dsn)
    assert SECRET not in error_texts(caught.value)


# --- all or nothing -------------------------------------------------------------------------


@pytest.mark.parametrize("size", [9, 1000], ids=["insert-path", "copy-path"])
def test_batch_enqueue_is_all_or_nothing_with_one_bad_payload_in_the_middle(
    client: pgbatch.Client, size: int
) -> None:
    queue = client.create_queue("jobs")
    queue.batch_enqueue([{"earlier": True}])
    before = row_counts(client)
    payloads: list[Any] = [{"i": i} for i in range(size)]
    payloads[size // 2] = {"bad": float("nan")}
    with pytest.raises(errors.PayloadNotJSON):
        queue.batch_enqueue(payloads)
    assert row_counts(client) == before
    assert [m.payload for m in queue.dequeue_many(size + 1)] == [{"earlier": True}]


@pytest.mark.parametrize(
    ("size", "table", "refused"),
    [
        (5, "message", "NEW.payload ? 'refuse'"),
        # A plain batch this large is written as packs of messages (migration 0005).
        (500, "message_pack", "jsonb_path_exists(NEW.payloads, '$[*].refuse')"),
    ],
    ids=["insert-path", "copy-path"],
)
def test_database_refusal_mid_batch_rolls_back_the_whole_batch(
    client: pgbatch.Client, size: int, table: str, refused: str
) -> None:
    """PostgreSQL itself refuses one row after earlier rows of the batch went in."""
    queue = client.create_queue("jobs")
    with client.db.connection() as conn:
        # A test-only trigger stands in for any server-side failure (disk, constraint...).
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$"
                " BEGIN IF {refused} THEN RAISE EXCEPTION 'refused by test';"
                " END IF; RETURN NEW; END $$;"
                " CREATE TRIGGER refuse BEFORE INSERT ON {table}"
                " FOR EACH ROW EXECUTE FUNCTION {function}()"
            ).format(
                function=sql.Identifier(client.schema, "refuse_row"),
                refused=sql.SQL(refused),
                table=sql.Identifier(client.schema, table),
            )
        )
    before = row_counts(client)
    payloads: list[Any] = [{"i": i} for i in range(size)]
    payloads[size - 2] = {"refuse": True}
    with pytest.raises(errors.DatabaseError) as caught:
        queue.batch_enqueue(payloads)
    assert "refused by test" in str(caught.value)
    assert_nothing_written(queue, before)


def test_bad_payload_in_the_callers_transaction_leaves_it_usable(
    pg_dsn: str, client: pgbatch.Client
) -> None:
    """The caller's row and its jobs commit together even after a rejected batch between them."""
    queue = client.create_queue("jobs")
    signup = sql.Identifier(client.schema, "signup")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (email text)").format(signup))
        conn.execute(sql.SQL("INSERT INTO {} VALUES ('a@x.org')").format(signup))
        for size in (3, 200):  # the insert and the COPY paths
            bad: list[Any] = [{"i": i} for i in range(size)]
            bad[size // 2] = {1, 2}
            with pytest.raises(errors.PayloadNotJSON):
                queue.batch_enqueue(bad, conn=conn)
        ids = queue.batch_enqueue([{"good": i} for i in range(100)], conn=conn)
        assert queue.stats().ready == 0  # not committed yet
        conn.commit()
    assert queue.stats().ready == 100
    assert sorted(m.id for m in queue.dequeue_many(200)) == ids
    with client.db.connection() as conn:
        assert conn.execute(sql.SQL("SELECT email FROM {}").format(signup)).fetchall() == [
            ("a@x.org",)
        ]


# --- typed queues ---------------------------------------------------------------------------


def test_typed_queue_validates_on_enqueue_and_parses_on_dequeue(client: pgbatch.Client) -> None:
    queue = client.create_queue("signups", model=Signup)
    queue.enqueue({"email": "a@x.org", "age": "41"})  # coerced by the model
    queue.enqueue(Signup(email="b@x.org", age=7))
    queue.batch_enqueue([{"email": f"c{i}@x.org", "age": i} for i in range(100)])
    got = queue.dequeue_many(200)
    assert all(isinstance(m.payload, Signup) for m in got)
    assert got[0].payload == Signup(email="a@x.org", age=41)
    assert got[1].payload == Signup(email="b@x.org", age=7)
    assert [m.payload.age for m in got[2:]] == list(range(100))
    again = client.queue("signups", model=Signup)
    again.enqueue({"email": "d@x.org", "age": 1})
    [message] = again.dequeue_many(1)
    assert message.payload == Signup(email="d@x.org", age=1)


def test_typed_queue_stores_the_models_json_not_the_raw_input(client: pgbatch.Client) -> None:
    typed = client.create_queue("signups", model=Signup)
    typed.enqueue({"email": "a@x.org", "age": "41", "extra": "dropped by the model"})
    [message] = client.queue("signups").dequeue_many(1)  # an untyped handle sees the JSON
    assert message.payload == {"email": "a@x.org", "age": 41}


def test_dead_letters_of_a_typed_queue_are_model_instances(client: pgbatch.Client) -> None:
    queue = client.create_queue("signups", model=Signup, max_attempts=1)
    queue.batch_enqueue([{"email": "a@x.org", "age": 1}, {"email": "b@x.org", "age": 2}])
    outcome = queue.fail_many(queue.dequeue_many(2), "smtp timeout")
    assert len(outcome.dead) == 2
    dead = queue.dead_letters()
    assert [d.payload for d in dead] == [
        Signup(email="a@x.org", age=1),
        Signup(email="b@x.org", age=2),
    ]
    assert {d.last_error for d in dead} == {"smtp timeout"}
    assert queue.requeue_dead() == 2
    assert all(isinstance(m.payload, Signup) for m in queue.dequeue_many(2))


def test_dead_letter_that_no_longer_fits_the_model_is_shown_raw(client: pgbatch.Client) -> None:
    untyped = client.create_queue("signups", max_attempts=1)
    untyped.enqueue({"legacy": "shape"})
    untyped.fail_many(untyped.dequeue_many(1), "poison")
    [dead] = client.queue("signups", model=Signup).dead_letters()
    assert dead.payload == {"legacy": "shape"} and dead.last_error == "poison"
