"""Keeping a pgbatch schema healthy: archive retention, archive partitions, and a health check.

The archive is partitioned by day on ``archived_at`` (migration 0001). Retention drops whole
daily partitions, which takes milliseconds whatever a day holds and leaves no dead tuples
behind; rows are deleted one by one only where no partition can be dropped: the default
partition (rows archived on a day that had no partition yet), a single queue's rows in
partitions shared with other queues, and, with ``exact=True``, the older part of the day that
holds the cutoff.

``health`` reports what makes a queue slow down as it churns: dead tuples in the hot tables
(``message`` and ``message_pack``, summed), their size and their indexes' sizes, and whatever
holds back the xmin horizon (an old snapshot, a forgotten prepared transaction, a replication
slot), which stops vacuum from removing them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from psycopg import sql

from pgbatch import errors
from pgbatch.operations import Plan, Row, Statement
from pgbatch.queries import Queries

if TYPE_CHECKING:
    from pgbatch.client import Client

__all__ = [
    "ArchivePartition",
    "Health",
    "PruneReport",
    "XminHolder",
    "archive_partitions",
    "ensure_archive_partitions",
    "health",
    "prune_archive",
]

_DROP_ATTEMPTS = 3
_HOLDERS_CHECKED = 1000


@dataclass(frozen=True, slots=True)
class ArchivePartition:
    """One partition of the archive; the default partition has no bounds."""

    name: str
    lower_bound: datetime | None
    upper_bound: datetime | None

    @property
    def is_default(self) -> bool:
        return self.upper_bound is None

    def holds(self, moment: datetime) -> bool:
        return (
            self.lower_bound is not None
            and self.upper_bound is not None
            and self.lower_bound <= moment < self.upper_bound
        )


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What prune_archive did. ``effective_cutoff`` is where it stopped: the start of the day
    that holds ``cutoff`` (whole days are kept), or ``cutoff`` itself with ``exact``."""

    cutoff: datetime
    effective_cutoff: datetime
    queue: str | None
    dropped_partitions: list[str]
    deleted_rows: int
    seconds: float


@dataclass(frozen=True, slots=True)
class XminHolder:
    """Something that holds back the xmin horizon: a session, a prepared transaction or a
    replication slot. ``seconds`` is how long (unknown for slots); ``xmin_age`` in xids."""

    kind: str
    holder: str
    xmin_age: int
    seconds: float | None
    detail: str

    def describe(self) -> str:
        held = f" for {_human_seconds(self.seconds)}" if self.seconds is not None else ""
        extra = f" ({self.detail})" if self.detail else ""
        return (
            f"{self.kind} {self.holder}{extra} has held the xmin horizon{held}"
            f" ({self.xmin_age:,} transactions)"
        )


@dataclass(frozen=True, slots=True)
class Health:
    """The hot tables' state (``message`` and ``message_pack``, summed) and the xmin horizon
    holders, with warnings worth acting on."""

    live_tuples: int
    dead_tuples: int
    table_bytes: int
    indexes_bytes: int
    index_bytes: dict[str, int]
    archive_bytes: int
    last_autovacuum: datetime | None
    last_vacuum: datetime | None
    autovacuum_count: int
    xmin_holders: list[XminHolder] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def oldest_xmin_holder(self) -> XminHolder | None:
        return self.xmin_holders[0] if self.xmin_holders else None


def _moment(moment: datetime | None) -> str:
    return "never" if moment is None else moment.isoformat(sep=" ", timespec="seconds")


def _human_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- plans (run by client.db, so an async face can reuse them) ---------------------------


def _scalar_plan(statement: Statement) -> Plan[Any]:
    rows = yield statement
    return rows[0][0]


def _partitions_plan(q: Queries) -> Plan[list[ArchivePartition]]:
    rows = yield Statement(q.archive_partition_list, {"schema": q.schema})
    return [ArchivePartition(str(r[0]), r[1], r[2]) for r in rows]


def _partition_sql(template: bytes, schema: str, partition: str) -> bytes:
    composed = sql.SQL(template.decode()).format(partition=sql.Identifier(schema, partition))
    return composed.as_string(None).encode()


def _drop_plan(q: Queries, partition: str, lock_timeout: timedelta) -> Plan[None]:
    timeout = f"{max(1, int(lock_timeout.total_seconds() * 1000))}ms"
    yield Statement(q.maintenance_set_lock_timeout, {"lock_timeout": timeout})
    yield Statement(_partition_sql(q.archive_partition_drop, q.schema, partition))


def _health_plan(
    q: Queries, holders_limit: int
) -> Plan[tuple[Row, dict[str, int], list[XminHolder]]]:
    table_rows = yield Statement(q.maintenance_table_health, {"schema": q.schema})
    if not table_rows:
        raise errors.ConfigurationError(
            f"schema {q.schema!r} has no pgbatch tables: run `pgbatch migrate`"
        )
    index_rows = yield Statement(q.maintenance_index_sizes, {"schema": q.schema})
    holder_rows = yield Statement(q.maintenance_xmin_holders, {"limit": holders_limit})
    holders = [
        XminHolder(str(r[0]), str(r[1]), int(r[2]), r[3], str(r[4] or "")) for r in holder_rows
    ]
    return table_rows[0], {str(r[0]): int(r[1]) for r in index_rows}, holders


# --- public functions ----------------------------------------------------------------------


def archive_partitions(client: Client) -> list[ArchivePartition]:
    """The archive's partitions, oldest first, the default partition last."""
    return client.db.run(_partitions_plan(client.queries), transaction=False)


def ensure_archive_partitions(client: Client, days_ahead: int = 7) -> int:
    """Creates the daily archive partitions from yesterday to ``days_ahead`` days from now;
    how many were missing. Run it at least weekly (``pgbatch archive prune`` and
    ``pgbatch migrate`` do): rows of a day without a partition land in the default partition,
    where retention has to delete them row by row."""
    if days_ahead < 0:
        raise errors.InvalidArgument(f"days_ahead must be >= 0, got {days_ahead}")
    statement = Statement(client.queries.archive_ensure_partitions, {"days": days_ahead + 2})
    return int(client.db.run(_scalar_plan(statement)))


def prune_archive(
    client: Client,
    *,
    older_than: timedelta,
    queue: str | None = None,
    exact: bool = False,
    lock_timeout: timedelta = timedelta(seconds=5),
) -> PruneReport:
    """Removes archived messages older than ``older_than`` (by the database clock).

    Drops every daily partition whose whole day is older than the cutoff (for ``queue``: only
    those holding no other queue's rows). Rows in the default partition are deleted. The day
    that holds the cutoff is kept whole unless ``exact``, so up to a day more than asked is
    kept: deleting part of a busy day row by row is what partitions are there to avoid.
    """
    if older_than < timedelta(0):
        raise errors.InvalidArgument(f"older_than must be >= 0, got {older_than}")
    started = time.perf_counter()
    q = client.queries
    queue_id = client.queue(queue).info.id if queue is not None else None
    cutoff = client.db.run(
        _scalar_plan(Statement(q.maintenance_cutoff, {"older_than": older_than})),
        transaction=False,
    )
    partitions = archive_partitions(client)
    effective = _effective_cutoff(partitions, cutoff, exact=exact)
    dropped = []
    for partition in partitions:
        if partition.upper_bound is None or partition.upper_bound > effective:
            continue
        if queue_id is not None and _holds_other_queues(client, partition.name, queue_id):
            continue  # shared with other queues: this queue's rows go by the delete below
        _drop_partition(client, partition.name, lock_timeout)
        dropped.append(partition.name)
    deleted = client.db.run(
        _scalar_plan(Statement(q.archive_delete_older, {"cutoff": effective, "queue_id": queue_id}))
    )
    return PruneReport(
        cutoff=cutoff,
        effective_cutoff=effective,
        queue=queue,
        dropped_partitions=dropped,
        deleted_rows=int(deleted),
        seconds=time.perf_counter() - started,
    )


def _effective_cutoff(
    partitions: list[ArchivePartition], cutoff: datetime, *, exact: bool
) -> datetime:
    if not exact:
        for partition in partitions:
            if partition.holds(cutoff) and partition.lower_bound is not None:
                return partition.lower_bound
    return cutoff


def _holds_other_queues(client: Client, partition: str, queue_id: int) -> bool:
    statement = Statement(
        _partition_sql(
            client.queries.archive_partition_holds_other_queues, client.schema, partition
        ),
        {"queue_id": queue_id},
    )
    return bool(client.db.run(_scalar_plan(statement), transaction=False))


def _drop_partition(client: Client, partition: str, lock_timeout: timedelta) -> None:
    # DROP takes an exclusive lock on the whole archive for a moment; under a steady stream
    # of archiving workers, a short lock_timeout and a retry beat a long queue of waiters.
    for attempt in range(1, _DROP_ATTEMPTS + 1):
        try:
            client.db.run(_drop_plan(client.queries, partition, lock_timeout))
            return
        except errors.RetryableDatabaseError:
            if attempt == _DROP_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)


def health(
    client: Client,
    *,
    xmin_warn_after: timedelta = timedelta(minutes=5),
    xmin_warn_xids: int = 10_000_000,
    dead_tuple_warn: int = 100_000,
    holders_limit: int = 5,
) -> Health:
    """The hot tables' dead tuples and sizes (``message`` and ``message_pack``, summed), and
    the oldest xmin horizon holders.

    Warns about every holder that has held the horizon longer than ``xmin_warn_after`` (or
    for more than ``xmin_warn_xids`` transactions), and when the hot table carries more than
    ``dead_tuple_warn`` dead tuples; ``xmin_holders`` lists the oldest ``holders_limit``.
    Seeing other roles' sessions needs pg_read_all_stats (or pg_monitor).
    """
    # Every holder is checked for warnings (a recent one may sit behind older ones); only the
    # oldest holders_limit are kept in the report.
    table, indexes, holders = client.db.run(
        _health_plan(client.queries, _HOLDERS_CHECKED), transaction=False
    )
    live, dead, table_bytes, indexes_bytes, last_auto, last_manual, auto_count, archive = table
    warnings = [
        holder.describe() + ": vacuum cannot remove dead tuples meanwhile"
        for holder in holders
        if holder.xmin_age >= xmin_warn_xids
        or (holder.seconds is not None and holder.seconds >= xmin_warn_after.total_seconds())
    ]
    if int(dead) >= dead_tuple_warn:
        warnings.append(
            f"the message table holds {int(dead):,} dead tuples"
            f" (last autovacuum: {_moment(last_auto)})"
        )
    return Health(
        live_tuples=int(live),
        dead_tuples=int(dead),
        table_bytes=int(table_bytes),
        indexes_bytes=int(indexes_bytes),
        index_bytes=indexes,
        archive_bytes=int(archive),
        last_autovacuum=last_auto,
        last_vacuum=last_manual,
        autovacuum_count=int(auto_count),
        xmin_holders=holders[:holders_limit],
        warnings=warnings,
    )
