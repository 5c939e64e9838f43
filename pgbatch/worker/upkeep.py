"""Upkeep every worker process does on the side, so that nobody has to remember a cron job.

- Vacuum the hot table when dead tuples pile up. Every message leaves two dead tuples behind
  (its lease update and its archive), and autovacuum visits a table at most once per
  ``autovacuum_naptime`` (a minute by default), or never where it is off: in between, the
  dequeue index fills with dead entries and throughput sags. The check (one row of
  pg_stat_user_tables) runs every second: at tens of thousands of messages a second, a
  5-second check let 225,000-262,000 dead tuples gather before a vacuum, a 1-second check
  61,000-176,000 (tests/test_soak.py, 2026-11-30). ``VACUUM (SKIP_LOCKED)`` lets only one
  worker run it at a time; a role that does not own the table skips this. The packs' table
  (migration 0005) gets the same check: two dead tuples per pack rather than per message.
- Create the daily archive partitions ahead of time, hourly, so archived rows do not pile
  into the default partition (which retention can only prune row by row).
"""

from __future__ import annotations

import asyncio
import logging

from pgbatch import errors
from pgbatch.operations import Plan, Statement
from pgbatch.queries import Queries
from pgbatch.worker.backoff import jittered
from pgbatch.worker.context import RunContext

log = logging.getLogger("pgbatch.worker")

CHECK_SECONDS = 1.0
PARTITION_SECONDS = 3600.0
# Vacuum a hot table once its dead tuples pass both bounds: a floor, and a share of the live
# rows. The packs' table has a lower floor: a dead tuple there stands for up to 100
# messages, the table is small (a vacuum of it takes milliseconds), and dead entries in front
# of its dequeue index are stepped over by every dequeue until a vacuum removes them.
VACUUM_MIN_DEAD = {"message": 20_000, "message_pack": 1_000}
VACUUM_DEAD_SHARE = 0.2
PARTITION_DAYS = 9


def vacuum_if_bloated(q: Queries) -> Plan[bool | None]:
    """Vacuums each hot table (``message``, ``message_pack``) that has many dead tuples: True
    if it vacuumed one, None if this role may not, False otherwise."""
    rows = yield Statement(q.hot_tables_vacuum_candidates)
    if not rows:
        return False
    if not all(may_vacuum for *_, may_vacuum in rows):
        return None
    vacuums = {"message": q.message_vacuum, "message_pack": q.message_pack_vacuum}
    due = [
        table
        for table, dead, live, _ in rows
        if dead >= max(VACUUM_MIN_DEAD[table], VACUUM_DEAD_SHARE * live)
    ]
    for table in due:
        yield Statement(vacuums[table])
    return bool(due)


def ensure_partitions(q: Queries) -> Plan[None]:
    yield Statement(q.archive_ensure_partitions, {"days": PARTITION_DAYS})


async def upkeep(ctx: RunContext) -> None:
    """Runs until cancelled; database errors are logged and retried on the next round."""
    loop = asyncio.get_running_loop()
    may_vacuum = True
    partitions_due = loop.time()
    while True:
        try:
            if loop.time() >= partitions_due:
                await ctx.db.run(ensure_partitions(ctx.queries), transaction=False)
                partitions_due = loop.time() + PARTITION_SECONDS
            if may_vacuum:
                started = loop.time()
                vacuumed = await ctx.db.run(vacuum_if_bloated(ctx.queries), transaction=False)
                if vacuumed is None:
                    may_vacuum = False
                    log.info("not the owner of the hot table: leaving its vacuum to autovacuum")
                elif vacuumed:
                    log.debug("vacuumed the hot tables in %.2fs", loop.time() - started)
        except errors.DatabaseError as exc:
            log.debug("upkeep skipped this round: %s", exc)
        await asyncio.sleep(jittered(CHECK_SECONDS, 0.2))
