"""How many messages a worker asks for at a time: a fixed number, or one that adapts.

The adaptive size follows the pgqrs guide's pattern: grow while full batches finish well
under a target time, shrink when they run long, always within bounds. It is per queue and
per worker process, and sees only the handler's time (fetching and archiving are constant
per batch, so they argue for larger batches, never smaller).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from pgbatch import errors

# Defaults of "auto": a batch should take about a second; larger ones hold leases longer and
# lose more work to a crash, smaller ones pay the per-batch round trips more often.
TARGET_SECONDS = 1.0
START_SIZE = 100
MIN_SIZE = 10
MAX_SIZE = 1000
GROWTH = 1.5

BatchSizeSetting = int | Literal["auto"]


class BatchSizer(Protocol):
    @property
    def size(self) -> int: ...

    def observe(self, taken: int, seconds: float) -> None: ...


@dataclass(slots=True)
class FixedBatchSize:
    size: int

    def observe(self, taken: int, seconds: float) -> None:
        """A fixed size ignores how batches went."""


@dataclass(slots=True)
class AdaptiveBatchSize:
    """Grows by GROWTH while full batches take under half the target; shrinks when over it."""

    size: int = START_SIZE
    minimum: int = MIN_SIZE
    maximum: int = MAX_SIZE
    target_seconds: float = TARGET_SECONDS

    def __post_init__(self) -> None:
        if not 0 < self.minimum <= self.maximum:
            raise errors.InvalidArgument(
                f"adaptive batch bounds must satisfy 0 < minimum <= maximum, got"
                f" {self.minimum}..{self.maximum}"
            )
        self.size = min(max(self.size, self.minimum), self.maximum)

    def observe(self, taken: int, seconds: float) -> None:
        """Adjusts the size after a batch of ``taken`` messages ran for ``seconds``."""
        if seconds > self.target_seconds:
            # Towards the size that would have met the target, at most halving at once.
            ratio = max(0.5, min(1 / GROWTH, self.target_seconds / seconds))
            self.size = max(self.minimum, min(self.size, int(taken * ratio)))
        elif taken >= self.size and seconds < self.target_seconds / 2:
            # Only a full batch says anything about a larger one.
            self.size = min(self.maximum, max(self.size + 1, int(self.size * GROWTH)))


def batch_sizer(setting: BatchSizeSetting) -> BatchSizer:
    """The sizer for a handler's (or the run's) batch_size setting."""
    if setting == "auto":
        return AdaptiveBatchSize(START_SIZE, MIN_SIZE, MAX_SIZE, TARGET_SECONDS)
    if isinstance(setting, bool) or not isinstance(setting, int) or setting <= 0:
        raise errors.InvalidArgument(
            f"batch_size must be a positive integer or 'auto', got {setting!r}"
        )
    return FixedBatchSize(setting)
