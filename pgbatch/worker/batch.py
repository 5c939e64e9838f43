"""The batch a handler receives, and the outcome the worker settles from it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar

import psycopg

from pgbatch import errors
from pgbatch.models import Message
from pgbatch.operations import seconds
from pgbatch.payloads import encode_json

P = TypeVar("P")


def error_text(error: str | BaseException) -> str:
    """The text stored as a message's last error (fail_many makes it storable)."""
    if isinstance(error, BaseException):
        detail = str(error)
        text = f"{type(error).__name__}: {detail}" if detail else type(error).__name__
    elif isinstance(error, str):
        text = error
    else:
        raise errors.InvalidArgument(f"error must be a str or an exception, got {error!r}")
    return text


@dataclass(frozen=True, slots=True)
class Failure:
    message: Message[Any]
    error: str
    delay: float | None


@dataclass(slots=True)
class Settlement:
    """What settling did: counts of messages archived, retried, dead-lettered, lease-lost."""

    archived: int = 0
    retried: int = 0
    dead: int = 0
    lost: int = 0

    def add(self, other: Settlement) -> None:
        self.archived += other.archived
        self.retried += other.retried
        self.dead += other.dead
        self.lost += other.lost


@dataclass(slots=True)
class Outcome:
    """Messages still to archive (with results, if any) and to fail; plus what was settled
    already inside a transactional handler's own transaction."""

    archive: list[Message[Any]] = field(default_factory=list)
    results: list[Any] | None = None
    failures: list[Failure] = field(default_factory=list)
    settled: Settlement = field(default_factory=Settlement)

    @classmethod
    def all_failed(cls, messages: Sequence[Message[Any]], error: str) -> Outcome:
        return cls(failures=[Failure(m, error, None) for m in messages])

    def merge(self, other: Outcome) -> Outcome:
        if self.results is None and other.results is None:
            results = None
        else:
            results = (self.results or [None] * len(self.archive)) + (
                other.results or [None] * len(other.archive)
            )
        settled = Settlement()
        settled.add(self.settled)
        settled.add(other.settled)
        return Outcome(
            self.archive + other.archive, results, self.failures + other.failures, settled
        )


class Batch(Generic[P]):
    """The messages a handler processes together.

    Every message not marked with ``fail`` is archived when the handler returns (with its
    ``complete`` result, if any); if the handler raises, the whole batch fails with that error.
    ``conn`` is the open transaction of a transactional handler (None otherwise): the
    handler's writes and the archive of this batch commit in it, or neither does.
    """

    __slots__ = ("_failures", "_ids", "_results", "conn", "messages", "queue")

    def __init__(
        self,
        messages: list[Message[P]],
        queue: str,
        conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any] | None = None,
    ) -> None:
        self.messages = messages
        self.queue = queue
        self.conn = conn
        self._failures: dict[int, tuple[str, float | None]] = {}
        self._results: dict[int, Any] = {}
        self._ids: frozenset[int] | None = None

    def __iter__(self) -> Iterator[Message[P]]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __repr__(self) -> str:
        return f"<Batch {self.queue!r} of {len(self.messages)}>"

    def fail(
        self,
        msg: Message[P],
        error: str | BaseException,
        *,
        delay: float | timedelta | None = None,
    ) -> None:
        """Marks ``msg`` failed: it returns after ``delay`` (default: the queue's backoff),
        or goes to the dead letters once it has used its attempts."""
        self._check_member(msg)
        self._results.pop(msg.id, None)
        self._failures[msg.id] = (error_text(error), seconds(delay, "delay", allow_zero=True))

    def complete(self, msg: Message[P], result: Any) -> None:
        """Keeps ``result`` (JSON) with ``msg`` in the archive; undoes an earlier ``fail``."""
        self._check_member(msg)
        encode_json(result)  # PayloadNotJSON here, in the handler, rather than at archive time
        self._failures.pop(msg.id, None)
        self._results[msg.id] = result

    def _check_member(self, msg: Message[P]) -> None:
        if self._ids is None:
            self._ids = frozenset(m.id for m in self.messages)
        if getattr(msg, "id", None) not in self._ids:
            raise errors.InvalidArgument(f"{msg!r} is not a message of this batch")

    def outcome(self) -> Outcome:
        """The outcome of a handler that returned normally."""
        if not self._failures and not self._results:
            return Outcome(archive=self.messages)
        failures = self._failures
        archive = [m for m in self.messages if m.id not in failures]
        results = [self._results.get(m.id) for m in archive] if self._results else None
        return Outcome(
            archive=archive,
            results=results,
            failures=[Failure(m, *failures[m.id]) for m in self.messages if m.id in failures],
        )
