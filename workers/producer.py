"""Feeds the ``emails`` queue of workers/emails.py at a steady rate (the docker compose system).

    python -m workers.producer --rate 500 --batch 100        # until stopped
    python -m workers.producer --total 10000                 # 10,000 messages, then exit

One message in every --bounce-every goes to an address that bounces, so that failures,
retries and dead letters show up in ``pgbatch stats``.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import pgbatch
from workers.emails import BOUNCING_DOMAIN, QUEUE, SCHEMA


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m workers.producer", description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0, help="messages per second")
    parser.add_argument("--batch", type=int, default=100, help="messages per batch_enqueue")
    parser.add_argument("--total", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--bounce-every", type=int, default=50, help="0: no bounces")
    parser.add_argument("--dsn", default=None, help="default: $PGBATCH_DSN, $DATABASE_URL")
    parser.add_argument("--schema", default=SCHEMA, help="default: $PGBATCH_SCHEMA or pgbatch")
    return parser.parse_args(argv)


def signup(user_id: int, bounce_every: int) -> dict[str, object]:
    bounce = bounce_every > 0 and user_id % bounce_every == 0
    domain = BOUNCING_DOMAIN if bounce else "example.org"
    return {"to": f"user{user_id}@{domain}", "user_id": user_id}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sent = 0
    with pgbatch.connect(args.dsn, schema=args.schema) as client:
        client.migrate()
        queue = client.create_queue(QUEUE, max_attempts=3)
        started = time.monotonic()
        for batch_number in itertools.count():
            if stopping or (args.total and sent >= args.total):
                break
            size = args.batch if not args.total else min(args.batch, args.total - sent)
            queue.batch_enqueue([signup(sent + i, args.bounce_every) for i in range(size)])
            sent += size
            if batch_number % 50 == 0:
                print(f"producer: {sent:,} messages enqueued", flush=True)
            # Keep the average rate: sleep until this batch's due time.
            time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
    print(f"producer: done, {sent:,} messages enqueued", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
