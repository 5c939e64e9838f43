"""pgbatch.dsn: which DSN wins, and that no password ever reaches a message (no server needed).

The fallback to the embedded server is exercised for real in test_embedded.py.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg.conninfo import conninfo_to_dict

from pgbatch.dsn import UNPARSABLE_DSN, describe_dsn, redact_dsn, resolve_dsn
from pgbatch.errors import ConfigurationError, InvalidDSN

SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGBATCH_DSN", "DATABASE_URL", "PGHOST", "PGHOSTADDR", "PGPORT"):
        monkeypatch.delenv(name, raising=False)
    for name in ("PGDATABASE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)


# --- resolution order ---------------------------------------------------------------------


def test_argument_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBATCH_DSN", "postgresql://env-pgbatch/db")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env-database-url/db")
    assert resolve_dsn("host=arg dbname=db") == "host=arg dbname=db"


def test_pgbatch_dsn_wins_over_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBATCH_DSN", "postgresql://env-pgbatch/db")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env-database-url/db")
    assert resolve_dsn() == "postgresql://env-pgbatch/db"
    assert resolve_dsn(None) == "postgresql://env-pgbatch/db"


def test_database_url_is_used_when_pgbatch_dsn_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://env-database-url/db")
    assert resolve_dsn() == "postgresql://env-database-url/db"


def test_empty_environment_variable_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBATCH_DSN", "  ")
    monkeypatch.setenv("DATABASE_URL", "postgresql://env-database-url/db")
    assert resolve_dsn() == "postgresql://env-database-url/db"


def test_explicit_empty_string_keeps_libpq_meaning() -> None:
    # "" is a valid conninfo (everything from PG* variables), not "no DSN given".
    assert resolve_dsn("") == ""


# --- invalid DSNs -------------------------------------------------------------------------

INVALID = [
    f"host=db.example.com password=has {SECRET}",  # unquoted space inside a password
    f"host=db.example.com password='{SECRET}",  # unterminated quote
    f"postgresql://app:{SECRET}%zz@db.example.com/app",  # bad percent-encoding
    f"postgresql+psycopg2://app:{SECRET}@db.example.com/app",  # SQLAlchemy URL
    f"POSTGRESQL://app:{SECRET}@db.example.com/app",  # libpq's scheme is case-sensitive
    f"postgresql://app:{SECRET}@db.example.com:54x2/app",  # port is not a number
    f"postgresql://app:{SECRET}@db.example.com/app?{SECRET}=1",  # unknown query parameter
    f"{SECRET}",
]


@pytest.mark.parametrize("dsn", INVALID)
def test_invalid_dsn_raises_without_quoting_the_password(dsn: str) -> None:
    with pytest.raises(InvalidDSN) as info:
        resolve_dsn(dsn)
    assert SECRET not in str(info.value)
    assert "DSN" in str(info.value)
    # Chaining, even suppressed, would carry libpq's message (it quotes the input) along.
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_invalid_dsn_from_environment_is_rejected_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"host=h password=a {SECRET}")
    with pytest.raises(InvalidDSN) as info:
        resolve_dsn()
    assert SECRET not in str(info.value)


def test_invalid_dsn_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError):
        resolve_dsn("not a dsn")


def test_sqlalchemy_url_gets_a_hint() -> None:
    with pytest.raises(InvalidDSN, match="SQLAlchemy"):
        resolve_dsn("postgresql+psycopg://u@h/db")


def test_port_out_of_range_is_rejected() -> None:
    with pytest.raises(InvalidDSN, match="'70000'"):
        resolve_dsn("postgresql://u@h:70000/db")
    assert resolve_dsn("postgresql://u@h1:5432,h2:5433/db")


# --- redaction ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            f"postgresql://app:{SECRET}@db.example.com:5432/app?sslmode=require",
            "postgresql://app:***@db.example.com:5432/app?sslmode=require",
        ),
        (
            f"postgres://app:{SECRET}@db.example.com/app",
            "postgres://app:***@db.example.com/app",
        ),
        (
            f"postgresql://app@db.example.com/app?sslmode=require&password={SECRET}",
            "postgresql://app@db.example.com/app?sslmode=require&password=***",
        ),
        (
            f"postgresql://app:{SECRET}@db.example.com/app?password={SECRET}",
            "postgresql://app:***@db.example.com/app?password=***",
        ),
        (  # libpq decodes percent-encoded parameter names
            f"postgresql://app@h/app?pass%77ord={SECRET}",
            "postgresql://app@h/app?pass%77ord=***",
        ),
        (
            f"postgresql://app:{SECRET}@h1:5432,h2:5433/app?target_session_attrs=read-write",
            "postgresql://app:***@h1:5432,h2:5433/app?target_session_attrs=read-write",
        ),
        (  # an unencoded '@' in the password: mask up to the last '@'
            f"postgresql://app:{SECRET}@x@h/app",
            "postgresql://app:***@h/app",
        ),
        (
            f"postgresql://app:{SECRET}@[::1]:5432/app",
            "postgresql://app:***@[::1]:5432/app",
        ),
        (
            f"host=db.example.com port=5432 password={SECRET} dbname=app",
            "host=db.example.com port=5432 password=*** dbname=app",
        ),
        (
            f"host=h password = '{SECRET} with spaces \\' and quote' dbname=app",
            "host=h password = *** dbname=app",
        ),
        (
            f"password=a\\ {SECRET} host=h",
            "password=*** host=h",
        ),
        (
            f"host=h sslpassword={SECRET} sslkey=/k.pem",
            "host=h sslpassword=*** sslkey=/k.pem",
        ),
        (  # a password-looking text inside another value is not a password
            "host=h application_name='password=visible'",
            "host=h application_name='password=visible'",
        ),
        ("postgresql://app@db.example.com/app", "postgresql://app@db.example.com/app"),
        ("postgresql://app:@db.example.com/app", "postgresql://app:@db.example.com/app"),
        ("host=h dbname=app", "host=h dbname=app"),
        ("", ""),
    ],
)
def test_redact(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize("dsn", INVALID)
def test_redact_never_raises_and_hides_unparsable_input(dsn: str) -> None:
    redacted = redact_dsn(dsn)
    assert SECRET not in redacted
    if dsn not in (INVALID[5],):  # a bad port is still parsable, hence redactable
        assert redacted == UNPARSABLE_DSN


def test_redact_keeps_everything_but_the_password() -> None:
    dsn = f"postgresql://app:{SECRET}@db.example.com:6543/app?sslmode=require&connect_timeout=5"
    original = conninfo_to_dict(dsn)
    redacted = conninfo_to_dict(redact_dsn(dsn))
    assert redacted.pop("password") == "***"
    original.pop("password")
    assert redacted == original


passwords = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),  # what libpq can take
    min_size=1,
    max_size=40,
)


@given(password=passwords)
def test_redacted_url_never_yields_the_password(password: str) -> None:
    dsn = f"postgresql://app:{quote(password, safe='')}@db.example.com/app"
    assert conninfo_to_dict(redact_dsn(dsn)).get("password") == "***"


@given(password=passwords)
def test_redacted_keywords_never_yield_the_password(password: str) -> None:
    escaped = password.replace("\\", "\\\\").replace("'", "\\'")
    dsn = f"host=db.example.com password='{escaped}' dbname=app"
    redacted = redact_dsn(dsn)
    assert conninfo_to_dict(redacted) == {
        "host": "db.example.com",
        "password": "***",
        "dbname": "app",
    }


# --- describe -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (f"postgresql://app:{SECRET}@127.0.0.1:5433/test", "127.0.0.1:5433/test"),
        (f"host=db.example.com password={SECRET} dbname=app", "db.example.com:5432/app"),
        ("postgresql://app@db.example.com/app", "db.example.com:5432/app"),
        ("postgresql://app@h1:5432,h2:5433/app", "h1:5432,h2:5433/app"),
        ("postgresql://app@h1,h2:6000/app", "h1:5432,h2:6000/app"),  # URL: a port per host
        ("host=h1,h2 port=6000 dbname=app", "h1:6000,h2:6000/app"),  # one port for all
        ("postgresql://app@[::1]:5433/app", "[::1]:5433/app"),
        ("hostaddr=10.0.0.7 dbname=app", "10.0.0.7:5432/app"),
        ("postgresql:///app?host=/var/run/postgresql", "/var/run/postgresql:5432/app"),
        ("user=alice", "localhost:5432/alice"),  # libpq: the database defaults to the user
        (f"postgresql://app:{SECRET}@x@h/app", "h:5432/app"),
        ("not a dsn", UNPARSABLE_DSN),
    ],
)
def test_describe(dsn: str, expected: str) -> None:
    assert describe_dsn(dsn) == expected


def test_describe_takes_defaults_from_pg_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "pg.internal")
    monkeypatch.setenv("PGPORT", "6432")
    monkeypatch.setenv("PGDATABASE", "jobs")
    assert describe_dsn("") == "pg.internal:6432/jobs"
    assert describe_dsn("host=other") == "other:6432/jobs"
