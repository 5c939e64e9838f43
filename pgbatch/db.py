"""The one seam between pgbatch and psycopg: pools, running plans, translating errors.

psycopg errors become ``pgbatch.errors`` here and nowhere else. Messages name the server as
host:port/dbname, never the password.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg import pq
from psycopg.abc import AdaptContext
from psycopg.adapt import Loader
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_dumps, set_json_loads

from pgbatch import errors
from pgbatch.dsn import describe_dsn
from pgbatch.operations import CopyIn, Plan, Row, Statement

T = TypeVar("T")

# SQLSTATEs after which the same call may well succeed.
_RETRYABLE = (
    pg_errors.LockNotAvailable,
    pg_errors.QueryCanceled,
    pg_errors.SerializationFailure,
    pg_errors.DeadlockDetected,
    pg_errors.AdminShutdown,
    pg_errors.CannotConnectNow,
)


def translate(exc: BaseException, target: str) -> errors.PgBatchError:
    """The pgbatch error for a psycopg (or pool) error."""
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return errors.DatabaseUnavailable(
            f"no connection to PostgreSQL at {target} became available in time: {exc}"
        )
    if isinstance(exc, _RETRYABLE):
        return errors.RetryableDatabaseError(f"PostgreSQL at {target}: {exc}".strip())
    if isinstance(exc, psycopg.OperationalError) and getattr(exc, "sqlstate", None) is None:
        # libpq's first line holds the reason ("... failed: Connection refused"); later lines
        # are hints such as "Is the server running on that host ...".
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        reason = lines[0].removeprefix("connection failed: ") if lines else type(exc).__name__
        return errors.DatabaseUnavailable(f"cannot reach PostgreSQL at {target}: {reason}")
    if isinstance(exc, psycopg.Error):
        state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        return errors.DatabaseError(f"PostgreSQL at {target}{state}: {str(exc).strip()}")
    raise TypeError(f"not a database error: {exc!r}")


@contextlib.contextmanager
def translated_errors(target: str) -> Iterator[None]:
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise translate(exc, target) from exc


class _OrjsonTextLoader(Loader):
    """json and jsonb in text format straight to orjson, which reads the buffer psycopg
    hands over as it is: no copy to bytes and no Python frame per value, as psycopg's
    generic loader needs for json.loads (measured: a fifth of the worker's row loading)."""

    load = staticmethod(orjson.loads)  # type: ignore[assignment]


def configure_adapters(context: AdaptContext) -> None:
    """orjson for jsonb both ways: several times faster than the json module."""
    set_json_loads(orjson.loads, context)
    set_json_dumps(orjson.dumps, context)
    for name in ("json", "jsonb"):
        context.adapters.register_loader(name, _OrjsonTextLoader)


def connection_kwargs(
    application_name: str,
    dsn: str = "",
    *,
    lock_timeout: float | None = None,
    statement_timeout: float | None = None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": application_name}
    options = session_options(dsn, lock_timeout=lock_timeout, statement_timeout=statement_timeout)
    if options:
        kwargs["options"] = options
    return kwargs


def session_options(
    dsn: str, *, lock_timeout: float | None, statement_timeout: float | None
) -> str | None:
    """libpq ``options`` that set the timeouts (seconds) at connection start, after any
    options of the DSN itself (which the keyword would otherwise replace)."""
    settings = [
        f"-c {name}={max(1, round(value * 1000))}"  # milliseconds; 0 would mean "no limit"
        for name, value in (
            ("lock_timeout", lock_timeout),
            ("statement_timeout", statement_timeout),
        )
        if value is not None
    ]
    if not settings:
        return None
    own = conninfo_to_dict(dsn).get("options") if dsn else None
    return " ".join([str(own), *settings] if own else settings)


def check_reachable(dsn: str, *, timeout: float) -> None:
    """Fails fast with DatabaseUnavailable, rather than a pool waiting out its timeout."""
    target = describe_dsn(dsn)
    with translated_errors(target):
        psycopg.connect(dsn, connect_timeout=max(1, int(timeout)), autocommit=True).close()


async def check_reachable_async(dsn: str, *, timeout: float) -> None:
    target = describe_dsn(dsn)
    with translated_errors(target):
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=max(1, int(timeout)), autocommit=True
        )
        await conn.close()


def in_open_transaction(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """Whether the caller's connection is inside a transaction that a savepoint can nest in."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS


# Marks "no step run yet": the first step comes from next(), later ones from send().
_START: list[Row] = []


def returns_rows(cur: psycopg.Cursor[Any] | psycopg.AsyncCursor[Any]) -> bool:
    """Whether the cursor's last statement returned rows: ``description`` tells too, but
    builds its list of columns on every call (a few percent of a worker's CPU)."""
    result = cur.pgresult
    return result is not None and result.status == pq.ExecStatus.TUPLES_OK


def run_plan(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    """Drives a plan on a sync connection (the caller chooses the transaction)."""
    rows: list[Row] = _START
    try:
        while True:
            step = next(plan) if rows is _START else plan.send(rows)
            rows = _execute(conn, step)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def _execute(conn: psycopg.Connection[Any], step: Statement | CopyIn) -> list[Row]:
    with conn.cursor() as cur:
        if isinstance(step, CopyIn):
            # Plain writes: each chunk goes to the socket while the next is encoded, and the
            # server parses as it arrives. psycopg's writer thread measured slower here.
            with cur.copy(step.sql) as copy:
                for chunk in step.data:
                    copy.write(chunk)
            return []
        cur.execute(step.sql, step.params)
        return cur.fetchall() if returns_rows(cur) else []


async def run_plan_async(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Drives a plan on an async connection."""
    rows: list[Row] = _START
    try:
        while True:
            step = next(plan) if rows is _START else plan.send(rows)
            rows = await _execute_async(conn, step)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def _execute_async(conn: psycopg.AsyncConnection[Any], step: Statement | CopyIn) -> list[Row]:
    async with conn.cursor() as cur:
        if isinstance(step, CopyIn):
            async with cur.copy(step.sql) as copy:
                for chunk in step.data:
                    await copy.write(chunk)
            return []
        await cur.execute(step.sql, step.params)
        return await cur.fetchall() if returns_rows(cur) else []


async def run_plans_pipelined_async(
    conn: psycopg.AsyncConnection[Any], plans: Sequence[Plan[Any]]
) -> list[Any]:
    """Drives several plans together, one round trip per step: each round sends the next
    statement of every plan still running in one pipeline (the worker archives a batch and
    leases the next this way). A round's statements share one implicit transaction."""
    results: list[Any] = [None] * len(plans)
    rows: list[list[Row]] = [_START] * len(plans)
    running = list(range(len(plans)))
    while running:
        steps: list[tuple[int, Statement]] = []
        for index in running:
            plan = plans[index]
            try:
                step = next(plan) if rows[index] is _START else plan.send(rows[index])
            except StopIteration as done:
                results[index] = done.value
                continue
            if not isinstance(step, Statement):
                raise TypeError("a COPY cannot run in a pipeline")
            steps.append((index, step))
        cursors = []
        if steps:
            async with conn.pipeline():
                for index, step in steps:
                    cursor = conn.cursor()
                    await cursor.execute(step.sql, step.params)
                    cursors.append((index, cursor))
        for index, cursor in cursors:
            rows[index] = await cursor.fetchall() if returns_rows(cursor) else []
            await cursor.close()
        running = [index for index, _ in steps]
    return results


class Database:
    """A psycopg ConnectionPool plus the translation of its errors."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        application_name: str,
        timeout: float,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
    ) -> None:
        self.target = describe_dsn(dsn)
        check_reachable(dsn, timeout=timeout)
        self.pool = psycopg_pool.ConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs=connection_kwargs(
                application_name,
                dsn,
                lock_timeout=lock_timeout,
                statement_timeout=statement_timeout,
            ),
            configure=configure_adapters,
            timeout=timeout,
            name=application_name,
            open=False,
        )
        with translated_errors(self.target):
            self.pool.open(wait=True, timeout=timeout)

    @contextlib.contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        with translated_errors(self.target), self.pool.connection() as conn:
            yield conn

    def run(
        self,
        plan: Plan[T],
        *,
        conn: psycopg.Connection[Any] | None = None,
        transaction: bool = True,
    ) -> T:
        """Runs a plan in one transaction on a pooled connection, or on the caller's own."""
        with translated_errors(self.target):
            if conn is not None:
                if not in_open_transaction(conn):
                    return run_plan(conn, plan)
                # A savepoint: a step failing midway (a bad payload met mid-COPY) undoes only
                # this plan and leaves the caller's transaction usable, not aborted.
                with conn.transaction():
                    return run_plan(conn, plan)
            with self.pool.connection() as own:
                if not transaction:
                    return run_plan(own, plan)
                with own.transaction():
                    return run_plan(own, plan)

    def close(self) -> None:
        self.pool.close()


class AsyncDatabase:
    """The async twin of Database, over psycopg's AsyncConnectionPool."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int,
        max_size: int,
        application_name: str,
        timeout: float,
        lock_timeout: float | None = None,
        statement_timeout: float | None = None,
    ) -> None:
        self.dsn = dsn
        self.target = describe_dsn(dsn)
        self.timeout = timeout
        # Kept for connections made outside the pool (the worker's lease keeper).
        self.connect_kwargs = connection_kwargs(
            application_name, dsn, lock_timeout=lock_timeout, statement_timeout=statement_timeout
        )
        self.pool = psycopg_pool.AsyncConnectionPool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            kwargs=self.connect_kwargs,
            configure=_configure_async,
            timeout=timeout,
            name=application_name,
            open=False,
        )

    async def open(self) -> None:
        await check_reachable_async(self.dsn, timeout=self.timeout)
        with translated_errors(self.target):
            await self.pool.open(wait=True, timeout=self.timeout)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with translated_errors(self.target):
            async with self.pool.connection() as conn:
                yield conn

    async def run(
        self,
        plan: Plan[T],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        transaction: bool = True,
    ) -> T:
        with translated_errors(self.target):
            if conn is not None:
                if not in_open_transaction(conn):
                    return await run_plan_async(conn, plan)
                async with conn.transaction():  # a savepoint, as in Database.run
                    return await run_plan_async(conn, plan)
            async with self.pool.connection() as own:
                if not transaction:
                    return await run_plan_async(own, plan)
                async with own.transaction():
                    return await run_plan_async(own, plan)

    async def close(self) -> None:
        await self.pool.close()


async def _configure_async(conn: psycopg.AsyncConnection[Any]) -> None:
    configure_adapters(conn)
