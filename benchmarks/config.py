"""Options of a benchmark sitting, and the sizes of each scenario (full or smoke)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

RESULTS_DIR = Path(__file__).with_name("results")


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much work each scenario does. The full sizes are the issue's."""

    messages: int = 100_000  # enqueue, drain and the limits that match them
    enqueue_batch: int = 1_000
    one_row_transactions: int = 3_000  # limit (c): transactions per client
    slow_io_counts: tuple[int, ...] = (1_000, 10_000, 20_000)
    slow_io_seconds: float = 0.2
    latency_seconds: float = 30.0
    latency_interval: float = 0.05
    churn_messages: int = 1_000_000
    memory_messages: int = 1_000_000
    transparent_counts: tuple[int, ...] = (1_000, 10_000, 100_000)


SMOKE_SIZES = Sizes(
    messages=3_000,
    one_row_transactions=50,
    slow_io_counts=(100, 200),
    slow_io_seconds=0.05,
    latency_seconds=2.0,
    latency_interval=0.05,
    churn_messages=4_000,
    memory_messages=4_000,
    transparent_counts=(100,),
)


@dataclass(frozen=True, slots=True)
class Options:
    dsn: str
    runs: int = 3
    smoke: bool = False
    only: tuple[str, ...] = ()
    sizes: Sizes = field(default_factory=Sizes)
    output: Path = RESULTS_DIR / "latest.json"
    markdown: Path | None = RESULTS_DIR / "latest.md"


def sizes_for(
    smoke: bool,
    *,
    churn_messages: int | None,
    memory_messages: int | None,
    latency_seconds: float | None,
    messages: int | None,
) -> Sizes:
    """The smoke or full sizes, with the command line's overrides."""
    sizes = SMOKE_SIZES if smoke else Sizes()
    if churn_messages is not None:
        sizes = replace(sizes, churn_messages=churn_messages)
    if memory_messages is not None:
        sizes = replace(sizes, memory_messages=memory_messages)
    if latency_seconds is not None:
        sizes = replace(sizes, latency_seconds=latency_seconds)
    if messages is not None:
        sizes = replace(sizes, messages=messages)
    return sizes
