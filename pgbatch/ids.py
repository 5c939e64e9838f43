"""Message ids handed out from blocks the client reserves ahead.

``message_id_seq`` counts in steps of :data:`ID_BLOCK` (migration 0003): one ``nextval``
reserves that many consecutive ids for the caller. A client keeps the blocks it reserved in
an :class:`IdReservoir`, so a ``batch_enqueue`` of plain messages is one COPY with no round
trip for ids, and still returns the ids in input order. Ids of a reservoir that is never
used up are skipped, as a sequence's ids are after a rollback; ids stay unique, not gapless.
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from collections.abc import Iterable

__all__ = ["ID_BLOCK", "IdReservoir"]

# The sequence's INCREMENT (migration 0003 sets it; a test checks they agree).
ID_BLOCK = 1000
# Blocks reserved beyond what a call needs: a producer of batches of 1,000 goes back to the
# server for ids once every few batches. The ids left over at close are skipped.
SPARE_BLOCKS = 4


class IdReservoir:
    """Thread-safe store of reserved ids. A forked child starts empty: ids reserved by the
    parent are the parent's alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._next = 0
        self._end = 0  # exclusive end of the current block
        self._blocks: deque[int] = deque()

    def _forget_if_forked(self) -> None:
        """Called with the lock held."""
        if self._pid != os.getpid():
            self._pid, self._next, self._end = os.getpid(), 0, 0
            self._blocks.clear()

    def take(self, count: int) -> list[int] | None:
        """``count`` ids in increasing order, or None (taking nothing) when too few are left."""
        with self._lock:
            self._forget_if_forked()
            if (self._end - self._next) + ID_BLOCK * len(self._blocks) < count:
                return None
            ids: list[int] = []
            while len(ids) < count:
                if self._next == self._end:
                    self._next = self._blocks.popleft()
                    self._end = self._next + ID_BLOCK
                stop = min(self._end, self._next + count - len(ids))
                ids.extend(range(self._next, stop))
                self._next = stop
            return ids

    @staticmethod
    def blocks_to_reserve(count: int) -> int:
        return math.ceil(count / ID_BLOCK) + SPARE_BLOCKS

    def add_blocks(self, starts: Iterable[int]) -> None:
        with self._lock:
            self._forget_if_forked()
            self._blocks.extend(sorted(starts))
