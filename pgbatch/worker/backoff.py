"""Exponential backoff with jitter, for everything that retries against the database."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays that double from ``initial`` to ``maximum``, each drawn in [delay/2, delay] so
    that workers that lost the server together do not come back in lockstep."""

    def __init__(self, initial: float = 0.05, maximum: float = 5.0) -> None:
        self.initial = initial
        self.maximum = maximum
        self.failures = 0

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * 2**self.failures)
        self.failures += 1
        return random.uniform(ceiling / 2, ceiling)

    async def sleep(self) -> float:
        delay = self.next_delay()
        await asyncio.sleep(delay)
        return delay

    def reset(self) -> None:
        self.failures = 0


def jittered(seconds: float, spread: float = 0.5) -> float:
    """``seconds`` give or take ``spread`` of it."""
    return seconds * random.uniform(1 - spread, 1 + spread)
