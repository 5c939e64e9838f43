"""``python -m benchmarks [--smoke] [--only SCENARIO ...] [--runs 3] [--dsn DSN]``."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from benchmarks.config import RESULTS_DIR, Options, sizes_for
from benchmarks.runner import rerender, run
from benchmarks.scenarios import all_scenarios
from pgbatch.dsn import resolve_dsn


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = [s.name for s in all_scenarios()]
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="pgbatch against PostgreSQL's own limit, in one sitting on one server.",
        epilog="Scenarios: " + ", ".join(names),
    )
    parser.add_argument(
        "--dsn",
        help="PostgreSQL to use (default: PGBATCH_DSN, DATABASE_URL, then the embedded server)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, to check the suite runs (figures mean nothing)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=[],
        metavar="SCENARIO",
        choices=names,
        help="run only these scenarios",
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="rounds per scenario (default 3; 1 with --smoke)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=RESULTS_DIR / "latest.json",
        help="where the JSON results go (default: %(default)s)",
    )
    parser.add_argument(
        "--markdown",
        type=Path,
        default=RESULTS_DIR / "latest.md",
        help="where the markdown section goes (default: %(default)s)",
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="measure nothing: print and write the markdown of an earlier results file",
    )
    parser.add_argument("--messages", type=int, help="messages for enqueue/drain (100,000)")
    parser.add_argument("--churn-messages", type=int, help="messages for churn (1,000,000)")
    parser.add_argument("--memory-messages", type=int, help="messages for memory (1,000,000)")
    parser.add_argument("--latency-seconds", type=float, help="latency run length (30)")
    args = parser.parse_args(argv)
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def options_from(args: argparse.Namespace) -> Options:
    runs = args.runs if args.runs is not None else (1 if args.smoke else 3)
    sizes = sizes_for(
        args.smoke,
        churn_messages=args.churn_messages,
        memory_messages=args.memory_messages,
        latency_seconds=args.latency_seconds,
        messages=args.messages,
    )
    return Options(
        dsn=resolve_dsn(args.dsn),
        runs=runs,
        smoke=args.smoke,
        only=tuple(args.only),
        sizes=sizes,
        output=args.output,
        markdown=args.markdown,
    )


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the stack: children are killed and schemas dropped on the way out.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    if args.render is not None:
        return rerender(args.render, args.markdown)
    return run(options_from(args))


if __name__ == "__main__":
    raise SystemExit(main())
