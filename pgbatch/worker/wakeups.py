"""Which queues may have visible messages, and the idle lanes waiting for one that does.

A queue is "ready" until a fetch finds it empty. Notifications, polls and requeues mark it
ready again and bump its generation, so that a fetch which started before such an event
cannot mark the queue empty after it (the event may have made messages visible meanwhile).
Each event wakes one idle lane, and at first only one idle lane at a time looks into a
queue (it claims it). Each full batch an idle lane brings back doubles how many may look at
once, and wakes them; a partial or empty one resets that to one. So a backlog brings every
lane in within a few round trips, while a small batch is not split between idle lanes and a
notification does not start a thundering herd.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence


class Wakeups:
    def __init__(self, queues: Sequence[str]) -> None:
        self.queues = list(queues)
        self._ready = dict.fromkeys(self.queues, True)
        self._generation = dict.fromkeys(self.queues, 0)
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._looking = dict.fromkeys(self.queues, 0)
        self._allowed = dict.fromkeys(self.queues, 1)

    def generation(self, queue: str) -> int:
        return self._generation[queue]

    def is_ready(self, queue: str) -> bool:
        return self._ready[queue]

    def any_ready(self) -> bool:
        return any(self._ready.values())

    def signal(self, queue: str) -> None:
        """Messages may have become visible in ``queue`` (unknown names are ignored)."""
        if queue in self._ready:
            self._mark_ready(queue)
            self.wake(1)

    def signal_all(self) -> None:
        for queue in self.queues:
            self._mark_ready(queue)
        self.wake(len(self.queues))

    def _mark_ready(self, queue: str) -> None:
        self._ready[queue] = True
        self._generation[queue] += 1

    def mark_empty(self, queue: str, generation: int) -> None:
        """A fetch that started at ``generation`` found ``queue`` empty."""
        if self._generation[queue] == generation:
            self._ready[queue] = False

    def pick(self, preferred: str | None, offset: int = 0) -> str | None:
        """``preferred`` if it is ready, else another ready queue (rotating by ``offset``)."""
        if preferred is not None and self._ready.get(preferred):
            return preferred
        count = len(self.queues)
        for step in range(count):
            queue = self.queues[(offset + step) % count]
            if self._ready[queue]:
                return queue
        return None

    def claim_idle(self, offset: int) -> str | None:
        """A ready queue that has room for one more idle lane to look into, claimed for the
        caller (who must ``unclaim`` it); or None."""
        count = len(self.queues)
        for step in range(count):
            queue = self.queues[(offset + step) % count]
            if self._ready[queue] and self._looking[queue] < self._allowed[queue]:
                self._looking[queue] += 1
                return queue
        return None

    def unclaim(self, queue: str, *, found_full_batch: bool) -> None:
        self._looking[queue] -= 1
        if found_full_batch:
            self._allowed[queue] = min(2 * self._allowed[queue], 1 << 16)
            self.wake(self._allowed[queue] - self._looking[queue])
        else:
            self._allowed[queue] = 1

    def waiting(self) -> int:
        """How many idle lanes wait for work."""
        return len(self._waiters)

    def wake(self, count: int) -> None:
        """Wakes up to ``count`` idle lanes."""
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1

    def wake_all(self) -> None:
        self.wake(len(self._waiters))

    async def wait(self, timeout: float | None) -> None:
        """Until woken, or ``timeout`` seconds (None: no limit)."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait([waiter], timeout=timeout)
        finally:
            if not waiter.done():
                waiter.cancel()
                self._waiters.remove(waiter)
