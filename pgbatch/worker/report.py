"""What a worker did: live counters while it runs, a WorkerReport when it returns."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from pgbatch.worker.batch import Settlement


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """Totals of one run_worker call.

    ``failed`` counts every failure recorded (retried or dead-lettered); ``dead_lettered`` the
    part of them that went to the dead letters; ``lease_losses`` messages this worker could not
    settle because its lease had been lost (another consumer may hold them now).
    """

    batches: int
    archived: int
    failed: int
    dead_lettered: int
    lease_losses: int
    seconds: float


@dataclass(slots=True)
class Counters:
    batches: int = 0
    messages: int = 0
    archived: int = 0
    failed: int = 0
    dead_lettered: int = 0
    lease_losses: int = 0
    started: float = field(default_factory=time.monotonic)

    def record(self, taken: int, settlement: Settlement) -> None:
        self.batches += 1
        self.messages += taken
        self.archived += settlement.archived
        self.failed += settlement.retried + settlement.dead
        self.dead_lettered += settlement.dead
        self.lease_losses += settlement.lost

    def report(self) -> WorkerReport:
        return WorkerReport(
            batches=self.batches,
            archived=self.archived,
            failed=self.failed,
            dead_lettered=self.dead_lettered,
            lease_losses=self.lease_losses,
            seconds=time.monotonic() - self.started,
        )
