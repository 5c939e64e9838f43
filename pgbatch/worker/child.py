"""One supervised worker process: ``python -m pgbatch.worker.child APP_PATH [options]``.

Started by the supervisor, never by hand. It loads the app, runs the worker, tells the
supervisor when it is ready (a byte on ``--ready-fd``), stops gracefully when the supervisor
goes away (end of file on ``--parent-fd``), and exits with:

- 0 once stopped gracefully (or drained, with ``--until-empty``),
- 1 on a runtime failure, or at once on a second signal,
- 2 when it cannot start as configured (bad app path, unknown queue, bad option).

The DSN comes in the environment (``PGBATCH_WORKER_DSN``), never on the command line, where
any local user could read it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from pgbatch import errors
from pgbatch.worker.adaptive import BatchSizeSetting
from pgbatch.worker.context import WorkerOptions
from pgbatch.worker.loader import load_app

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
DSN_ENV = "PGBATCH_WORKER_DSN"
LOG_LEVEL_ENV = "PGBATCH_LOG_LEVEL"

log = logging.getLogger("pgbatch.worker")


def batch_size_arg(text: str) -> BatchSizeSetting:
    if text == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or 'auto': {text!r}") from None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m pgbatch.worker.child")
    parser.add_argument("app")
    parser.add_argument("--queue", action="append", default=[])
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--batch-size", type=batch_size_arg, default=None)
    parser.add_argument("--until-empty", action="store_true")
    parser.add_argument("--shutdown-grace", type=float, default=30.0)
    parser.add_argument("--publish-queue-depth", action="store_true")
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--parent-fd", type=int, default=None)
    return parser.parse_args(argv)


def configure_logging() -> None:
    level = os.environ.get(LOG_LEVEL_ENV, "INFO").upper()
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s [pid %(process)d] %(name)s: %(message)s",
        stream=sys.stderr,
    )


def exit_now(code: int) -> NoReturn:
    """Exits without waiting for handler threads still running (their leases expire)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def notify_ready(fd: int | None) -> Callable[[], None] | None:
    if fd is None:
        return None

    def ready() -> None:
        os.write(fd, b"R")
        os.close(fd)

    return ready


def run(args: argparse.Namespace) -> int:
    try:
        app = load_app(args.app)
    except errors.ConfigurationError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except Exception:
        log.exception("cannot import the app %r", args.app)
        return EXIT_CONFIG
    dsn = os.environ.pop(DSN_ENV, None)
    if dsn:
        app.dsn = dsn
    options = WorkerOptions(
        queues=args.queue or None,
        concurrency=args.concurrency,
        until_empty=args.until_empty,
        batch_size=args.batch_size,
        shutdown_grace=args.shutdown_grace,
        publish_queue_depth=args.publish_queue_depth,
        on_ready=notify_ready(args.ready_fd),
        on_hard_stop=lambda: exit_now(EXIT_FAILURE),
        parent_fd=args.parent_fd,
    )
    try:
        asyncio.run(app.run_with_options(options))
    except (errors.ConfigurationError, errors.InvalidArgument) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    except errors.PgBatchError as exc:
        log.error("worker failed: %s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parse_args(argv)
    configure_logging()
    exit_now(run(args))


if __name__ == "__main__":
    main()
