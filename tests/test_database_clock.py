"""Promise 5 of docs/guarantees.md: leases run on the database's clock, not the client's.

A client whose clock is an hour off (libfaketime, preloaded into a subprocess) leases a
message for five seconds; the lease must still end five seconds later by the database's clock.
Had the client computed the expiry from its own clock, the message would stay hidden for an
hour (clock ahead) or be free again at once (clock behind).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pgbatch

# Debian's libfaketime (.ci/run installs it); the MT build, as psycopg's pool uses threads.
FAKETIME_LIBRARY = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
LEASE_SECONDS = 5.0
SKEWED_CLIENT = """
import sys, time
import pgbatch
dsn, schema, lease_seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
with pgbatch.connect(dsn, schema=schema, max_size=1) as client:
    [message] = client.queue("clock").dequeue_many(1, lease_seconds=lease_seconds)
print(message.id, time.time())
"""


def lease_from_a_skewed_client(dsn: str, schema: str, skew: str) -> tuple[int, float]:
    """Dequeues one message in a subprocess whose wall clock is ``skew`` off (e.g. "+1h");
    the leased id, and the time the subprocess read from its clock afterwards."""
    env = {
        **os.environ,
        "LD_PRELOAD": str(FAKETIME_LIBRARY),
        "FAKETIME": skew,
        "FAKETIME_DONT_RESET": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",  # timeouts and backoffs keep real time
    }
    done = subprocess.run(
        [sys.executable, "-c", SKEWED_CLIENT, dsn, schema, str(LEASE_SECONDS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    message_id, client_time = done.stdout.split()
    return int(message_id), float(client_time)


@pytest.mark.skipif(
    not FAKETIME_LIBRARY.exists(),
    reason=f"needs libfaketime ({FAKETIME_LIBRARY}; Debian: apt-get install libfaketime)",
)
@pytest.mark.parametrize(("skew", "skew_seconds"), [("+1h", 3600.0), ("-1h", -3600.0)])
def test_a_client_clock_an_hour_off_does_not_move_the_lease(
    pg_dsn: str, schema: str, client: pgbatch.Client, skew: str, skew_seconds: float
) -> None:
    queue = client.create_queue("clock")
    [enqueued] = queue.batch_enqueue([{"x": 1}])

    leased, client_time = lease_from_a_skewed_client(pg_dsn, schema, skew)

    # The subprocess really ran an hour off, or this test would prove nothing.
    assert abs(client_time - time.time() - skew_seconds) < 60
    assert leased == enqueued
    # Still leased: a clock an hour behind would have set an expiry already past.
    assert queue.dequeue_many(1) == []
    # Free again once the lease ran out by the database's clock: a clock an hour ahead
    # would have hidden the message for an hour.
    deadline = time.monotonic() + LEASE_SECONDS + 15
    again: list[pgbatch.Message[object]] = []
    while not again and time.monotonic() < deadline:
        time.sleep(0.25)
        again = queue.dequeue_many(1)
    assert [m.id for m in again] == [enqueued]
    assert again[0].attempts == 2
