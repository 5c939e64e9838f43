"""Hostile queue names, dedup keys and payloads through a real ``pgbatch worker`` process.

``tests/test_hostile_input.py`` proves the promises of docs/guarantees.md ("Hostile input")
through the client; ``tests/test_faults_hostile.py`` sends hostile error texts and results
through a worker. Here values drawn from the same hypothesis strategies travel through the
real command: queue names on its command line (to the supervisor, then to the child's), every
message dequeued, decoded, echoed back as its result and archived, or dead-lettered with its
dedup key. Values that cannot be stored are refused at enqueue with a typed error (NUL and
unpaired surrogates: ``PayloadNotJSON`` or ``InvalidArgument``; a payload above the queue's
limit: ``PayloadTooLarge``), so the worker only ever sees what can be stored.

The values are drawn up front, then one worker runs once for all of them: one process start
instead of one per example. The seed is printed, and ``PGBATCH_HOSTILE_SEED`` replays it.

The module-level ``app`` below is what the worker loads (``tests.test_hostile_processes:app``):
it reads its schema and queues from ``PGBATCH_TEST_HOSTILE``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from psycopg import sql

import pgbatch
from pgbatch import errors
from pgbatch.models import QUEUE_NAME_PATTERN
from pgbatch.texts import MAX_DEDUP_KEY_BYTES
from tests.test_hostile_input import (
    dedup_keys,
    has_unstorable,
    hostile_text,
    name_like,
    same_json,
    storable_json,
)
from tests.test_worker_processes import ROOT, wait_until

pytestmark = pytest.mark.timeout(60)

APP_PATH = "tests.test_hostile_processes:app"
CONFIG_ENV = "PGBATCH_TEST_HOSTILE"
SEED_ENV = "PGBATCH_HOSTILE_SEED"
PGBATCH = [sys.executable, "-m", "pgbatch.cli"]

# --- the worker's app ---------------------------------------------------------------------

config: dict[str, Any] = json.loads(os.environ.get(CONFIG_ENV, "{}"))
app = pgbatch.App(schema=config.get("schema", "pgbatch"), application_name="pgbatch-hostile")


def echo(batch: pgbatch.Batch[Any]) -> None:
    """Completes each message with what the worker received: its queue's name and payload."""
    for message in batch:
        batch.complete(message, {"queue": batch.queue, "payload": message.payload})


def refuse(batch: pgbatch.Batch[Any]) -> None:
    """Fails every message: with one attempt, it goes to the dead letters, dedup key kept."""
    for message in batch:
        batch.fail(message, f"refused in {batch.queue}")


for _name in config.get("echo", []):
    app.batch_handler(_name, batch_size=20)(echo)
for _name in config.get("refuse", []):
    app.batch_handler(_name, batch_size=20)(refuse)

# --- drawing the values -------------------------------------------------------------------

T = TypeVar("T")

# A long text of multi-byte characters and JSON escapes, within the default 1 MiB limit.
LONG_TEXT = "é'😀\\\"\u2028" * 40_000
TOO_LARGE = {"long": LONG_TEXT * 3}
FIXED_QUEUES = ["q.-:_Z9", "_" + "x" * 62]  # every allowed punctuation; the longest name


def drawn(strategy: st.SearchStrategy[T], count: int, draw_seed: int) -> list[T]:
    """Up to ``count`` values of ``strategy``, drawn by hypothesis (its edge cases first)."""
    values: list[T] = []

    @seed(draw_seed)
    @settings(
        max_examples=count,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: T) -> None:
        values.append(value)

    collect()
    return values


valid_names = st.from_regex(QUEUE_NAME_PATTERN, fullmatch=True).filter(
    lambda name: QUEUE_NAME_PATTERN.fullmatch(name) is not None
)
payloads = st.one_of(storable_json, hostile_text)


class Drawn:
    """Everything one run sends: queue names, payloads, dedup keys; and what must be refused."""

    def __init__(self, draw_seed: int) -> None:
        names = drawn(st.one_of(valid_names, name_like, hostile_text), 40, draw_seed)
        valid = list(dict.fromkeys(FIXED_QUEUES + [n for n in names if is_queue_name(n)]))
        self.invalid_names = [n for n in names if not is_queue_name(n)]
        self.echo_queues = valid[::2]
        self.refuse_queues = valid[1::2]
        values = [*drawn(payloads, 250, draw_seed), {"long": LONG_TEXT}]
        self.payloads = [p for p in values if not holds_unstorable(p)]
        self.bad_payloads = [p for p in values if holds_unstorable(p)]
        # Hypothesis repeats its edge cases ("", "0"...): 120 draws once gave only 17
        # distinct keys (seed 525502818); 300 gave at least 77 over 41 seeds.
        keys = drawn(dedup_keys, 300, draw_seed)
        self.keys = list(dict.fromkeys(k for k in keys if storable_key(k)))
        self.bad_keys = [k for k in keys if not storable_key(k)]

    def messages(self) -> Iterator[tuple[str, Any, str | None]]:
        """(queue, payload, dedup key): the queues in turn, a key for the first payloads."""
        queues = self.echo_queues + self.refuse_queues
        for i, payload in enumerate(self.payloads):
            key = self.keys[i] if i < len(self.keys) else None
            yield queues[i % len(queues)], payload, key


def holds_unstorable(value: Any) -> bool:
    """A NUL or an unpaired surrogate in any string of a JSON value, keys included."""
    if isinstance(value, str):
        return has_unstorable(value)
    if isinstance(value, dict):
        return any(holds_unstorable(k) or holds_unstorable(v) for k, v in value.items())
    if isinstance(value, list):
        return any(holds_unstorable(item) for item in value)
    return False


def is_queue_name(name: str) -> bool:
    return QUEUE_NAME_PATTERN.fullmatch(name) is not None


def storable_key(key: str) -> bool:
    return not has_unstorable(key) and len(key.encode()) <= MAX_DEDUP_KEY_BYTES


@pytest.fixture
def draw() -> Drawn:
    """A fresh draw per test (its seed printed with a failure)."""
    draw_seed = int(os.environ.get(SEED_ENV) or random.randrange(2**32))
    print(f"hostile values drawn with {SEED_ENV}={draw_seed}")
    values = Drawn(draw_seed)
    # The draw reached every kind of value: otherwise the test below proves less than it says.
    assert values.invalid_names and values.bad_payloads and values.bad_keys
    assert len(values.keys) >= 20 and len(values.payloads) >= 100
    return values


# --- helpers ------------------------------------------------------------------------------


def rows(conn: psycopg.Connection[Any], query: str, schema: str) -> list[tuple[Any, ...]]:
    return conn.execute(sql.SQL(query).format(schema=sql.Identifier(schema))).fetchall()


def same_bytes(stored: str | None, sent: str | None) -> bool:
    return (stored is None) == (sent is None) and (stored or "").encode() == (sent or "").encode()


def settled_and_workers(conn: psycopg.Connection[Any], schema: str) -> tuple[int, int]:
    """Messages archived or dead, and worker processes registered (a restart adds one)."""
    [(settled, workers)] = rows(
        conn,
        "SELECT (SELECT count(*) FROM {schema}.archive)"
        " + (SELECT count(*) FROM {schema}.dead_letter), (SELECT count(*) FROM {schema}.worker)",
        schema,
    )
    return int(settled), int(workers)


def start_worker(
    drawn_values: Drawn, schema: str, pg_dsn: str, log: Path, *queues: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        CONFIG_ENV: json.dumps(
            {
                "schema": schema,
                "echo": drawn_values.echo_queues,
                "refuse": drawn_values.refuse_queues,
            }
        ),
    }
    with log.open("ab") as sink:
        return subprocess.Popen(
            [*PGBATCH, "worker", APP_PATH, "--dsn", pg_dsn, *(f"--queue={q}" for q in queues)],
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


def enqueue_all(client: pgbatch.Client, values: Drawn) -> dict[int, tuple[str, Any, str | None]]:
    """Refuses the unstorable (nothing written), enqueues the rest; sent by id."""
    for name in values.invalid_names:
        with pytest.raises(errors.InvalidQueueName):
            client.create_queue(name)
    for name in values.echo_queues + values.refuse_queues:
        client.create_queue(name, max_attempts=1, backoff_base=0)
    first = client.queue(values.echo_queues[0])
    for payload in [*values.bad_payloads, TOO_LARGE]:
        refusal = errors.PayloadTooLarge if payload is TOO_LARGE else errors.PayloadNotJSON
        with pytest.raises(refusal):
            first.enqueue(payload)
    for key in values.bad_keys:
        with pytest.raises(errors.InvalidArgument):
            first.enqueue({"k": 1}, dedup_key=key)
    assert first.stats().ready == 0
    sent: dict[int, tuple[str, Any, str | None]] = {}
    by_queue: dict[str, list[tuple[Any, str | None]]] = {}
    for queue, payload, dedup_key in values.messages():
        by_queue.setdefault(queue, []).append((payload, dedup_key))
    for queue, items in by_queue.items():
        ids = client.queue(queue).batch_enqueue(
            [p for p, _ in items], dedup_keys=[k for _, k in items]
        )
        sent.update(zip(ids, [(queue, p, k) for p, k in items], strict=True))
    return sent


# --- the tests ----------------------------------------------------------------------------


def test_hostile_values_pass_through_a_real_worker_exactly(
    draw: Drawn, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    with pgbatch.connect(pg_dsn, schema=schema, max_size=2) as client:
        sent = enqueue_all(client, draw)
    assert len(sent) == len(draw.payloads)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        queued = {
            r[0]: (r[1], r[2])
            for r in rows(conn, "SELECT id, dedup_key, payload::text FROM {schema}.message", schema)
        }
        for message_id, (_, _, key) in sent.items():
            assert same_bytes(queued[message_id][0], key)

        log = tmp_path / "worker.log"
        # Every queue named on the command line: the names pass the CLI, the supervisor and
        # the child's own arguments before they reach a query.
        worker = start_worker(draw, schema, pg_dsn, log, *draw.echo_queues, *draw.refuse_queues)
        try:
            progress = wait_until(
                lambda: (
                    (p := settled_and_workers(conn, schema))
                    and (p[0] == len(sent) or p[1] > 1)
                    and p
                ),
                what=lambda: f"every message settled: {log.read_text(errors='replace')[-3000:]}",
            )
            assert progress == (len(sent), 1), log.read_text(errors="replace")  # no restart
            assert worker.poll() is None, log.read_text(errors="replace")
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(30) == 0, log.read_text(errors="replace")
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        archived = rows(
            conn,
            "SELECT a.id, q.name, a.payload, a.result, a.payload::text, (a.result->'payload')::text"
            " FROM {schema}.archive a JOIN {schema}.queue q ON q.id = a.queue_id",
            schema,
        )
        dead = rows(
            conn,
            "SELECT d.id, q.name, d.payload, d.dedup_key, d.payload::text"
            " FROM {schema}.dead_letter d JOIN {schema}.queue q ON q.id = d.queue_id",
            schema,
        )
        workers = rows(conn, "SELECT pid, stopped_at FROM {schema}.worker", schema)
        left = rows(conn, "SELECT count(*) FROM {schema}.message", schema)[0][0]

    assert len(workers) == 1 and workers[0][1] is not None  # one process, never restarted
    assert left == 0
    echo_queues = set(draw.echo_queues)
    assert {r[0] for r in archived} == {i for i, s in sent.items() if s[0] in echo_queues}
    assert {r[0] for r in dead} == {i for i, s in sent.items() if s[0] not in echo_queues}
    for message_id, queue, payload, result, payload_text, result_text in archived:
        name, original, _ = sent[message_id]
        assert queue.encode() == name.encode() == result["queue"].encode()
        assert same_json(original, payload), (original, payload)
        assert same_json(original, result["payload"]), (original, result)
        # The worker decoded the payload and encoded it back: the same jsonb, byte for byte.
        assert payload_text.encode() == result_text.encode() == queued[message_id][1].encode()
    for message_id, queue, payload, key, payload_text in dead:
        name, original, sent_key = sent[message_id]
        assert queue.encode() == name.encode()
        assert same_json(original, payload) and payload_text == queued[message_id][1]
        assert same_bytes(key, sent_key)


# Invalid whatever hypothesis draws: SQL, an empty name, a space, a non-ASCII letter.
FIXED_INVALID_NAMES = ["x'; DROP TABLE message; --", "", "a b", "é"]


def test_a_worker_told_of_invalid_queue_names_refuses_them_cleanly(
    draw: Drawn, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    # A command line cannot carry NUL or unpaired surrogates; a leading '-' is the next test.
    hostile = FIXED_INVALID_NAMES + [
        n for n in draw.invalid_names if not has_unstorable(n) and not n.startswith("-")
    ]
    log = tmp_path / "worker.log"
    worker = start_worker(draw, schema, pg_dsn, log, draw.echo_queues[0], *hostile)
    assert worker.wait(30) == 2  # a configuration error: the supervisor does not retry it
    text = log.read_text(errors="replace")
    assert "no batch handler for queue(s)" in text and "Traceback" not in text, text
    with psycopg.connect(pg_dsn) as conn:
        assert rows(conn, "SELECT count(*) FROM {schema}.worker", schema) == [(0,)]


def test_a_queue_name_like_an_option_is_named_in_the_error(
    draw: Drawn, pg_dsn: str, schema: str, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(draw, schema, pg_dsn, log, draw.echo_queues[0], "-x")
    assert worker.wait(30) == 2
    assert "no batch handler for queue(s) '-x'" in log.read_text(errors="replace")
