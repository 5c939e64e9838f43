"""The conservation check that ends every fault scenario.

Every enqueued id is in exactly one of archive or dead letters, none is left in the queue, no
id is archived twice, and the handler's side effects (rows of an ``effect`` table, one per
handler run over a message) number at most the message's attempts, at least one for each
archived message, and exactly one for archived messages of a transactional handler.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from tests.stored import stored_messages

EFFECT_TABLE = "effect"


def create_effect_table(dsn: str, schema: str) -> None:
    """One row per handler run over a message: (message_id, attempt, pid, at)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE {} (message_id bigint NOT NULL, attempt integer NOT NULL,"
                " pid integer NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(sql.Identifier(schema, EFFECT_TABLE))
        )
        conn.execute(
            sql.SQL("CREATE INDEX ON {} (message_id)").format(sql.Identifier(schema, EFFECT_TABLE))
        )


@dataclass
class Ledger:
    """Where every message of one queue ended up, read straight from the tables."""

    enqueued: set[int]
    archived: Counter[int]
    dead: dict[int, int]  # id -> attempts
    archived_attempts: dict[int, int]
    left_in_queue: set[int]
    effects: Counter[int] = field(default_factory=Counter)

    @property
    def duplicated_effects(self) -> int:
        """Handler runs beyond the first, over all messages: the price of at-least-once."""
        return sum(count - 1 for count in self.effects.values() if count > 1)

    def problems(self, *, transactional: bool = False, effects: bool = True) -> list[str]:
        found: list[str] = []
        twice = sorted(i for i, n in self.archived.items() if n > 1)
        both = sorted(set(self.archived) & set(self.dead))
        missing = sorted(self.enqueued - set(self.archived) - set(self.dead) - self.left_in_queue)
        strangers = sorted((set(self.archived) | set(self.dead)) - self.enqueued)
        _note(found, "archived more than once", twice)
        _note(found, "both archived and dead", both)
        _note(found, "left in the queue", sorted(self.left_in_queue))
        _note(found, "lost (nowhere)", missing)
        _note(found, "not enqueued by this test", strangers)
        if effects:
            attempts = {**self.dead, **self.archived_attempts}
            over = sorted(i for i, n in self.effects.items() if n > attempts.get(i, 0))
            _note(found, "more handler effects than attempts", over)
            if transactional:
                wrong = sorted(i for i in self.archived if self.effects[i] != 1)
                _note(found, "archived without exactly one transactional effect", wrong)
            else:
                unrun = sorted(i for i in self.archived if self.effects[i] < 1)
                _note(found, "archived without the handler having run", unrun)
        return found

    def assert_conserved(self, *, transactional: bool = False, effects: bool = True) -> None:
        problems = self.problems(transactional=transactional, effects=effects)
        assert not problems, "conservation broken:\n" + "\n".join(problems)


def _note(found: list[str], what: str, ids: list[int]) -> None:
    if ids:
        found.append(f"{len(ids)} {what}: {ids[:20]}{' ...' if len(ids) > 20 else ''}")


def read_ledger(
    dsn: str, schema: str, queue: str, enqueued: Collection[int], *, effects: bool = True
) -> Ledger:
    with psycopg.connect(dsn, autocommit=True) as conn:
        queue_id = _queue_id(conn, schema, queue)
        archived_rows = _rows(
            conn, schema, "SELECT id, attempts FROM {} WHERE queue_id = %s", "archive", queue_id
        )
        dead_rows = _rows(
            conn, schema, "SELECT id, attempts FROM {} WHERE queue_id = %s", "dead_letter", queue_id
        )
        left = [
            (int(a), int(b))
            for a, b in conn.execute(
                sql.SQL("SELECT id, attempts FROM {} AS m WHERE queue_id = %s").format(
                    stored_messages(schema)
                ),
                (queue_id,),
            ).fetchall()
        ]
        effect_rows = (
            _rows(
                conn, schema, "SELECT message_id, count(*) FROM {} GROUP BY 1", EFFECT_TABLE, None
            )
            if effects
            else []
        )
    return Ledger(
        enqueued=set(enqueued),
        archived=Counter(row[0] for row in archived_rows),
        dead=dict(dead_rows),
        archived_attempts=dict(archived_rows),
        left_in_queue={row[0] for row in left},
        effects=Counter(dict(effect_rows)),
    )


def _queue_id(conn: psycopg.Connection[Any], schema: str, queue: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT id FROM {} WHERE name = %s").format(sql.Identifier(schema, "queue")),
        (queue,),
    ).fetchone()
    assert row is not None, f"no queue {queue!r} in {schema}"
    return int(row[0])


def _rows(
    conn: psycopg.Connection[Any], schema: str, template: str, table: str, queue_id: int | None
) -> list[tuple[int, int]]:
    query = sql.SQL(template).format(sql.Identifier(schema, table))
    params = () if queue_id is None else (queue_id,)
    return [(int(a), int(b)) for a, b in conn.execute(query, params).fetchall()]


def remaining(dsn: str, schema: str) -> int:
    """Messages still in a queue (ready, delayed or leased, alone or in packs), all queues."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} AS m").format(stored_messages(schema))
        ).fetchone()
    return int(row[0]) if row else 0
