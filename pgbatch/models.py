"""The values pgbatch hands back: messages, queue settings, statistics, dead letters."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

from pgbatch import errors

P = TypeVar("P")

QUEUE_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,62}$")
SCHEMA_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,39}$")


def validate_queue_name(name: object) -> str:
    """The name itself if it is a valid queue name, else InvalidQueueName."""
    if not isinstance(name, str) or not QUEUE_NAME_PATTERN.fullmatch(name):
        raise errors.InvalidQueueName(
            f"invalid queue name {name!r}: use 1 to 63 characters, a letter or underscore"
            " first, then letters, digits, '_', '.', ':' or '-'"
        )
    return name


def validate_schema_name(name: str) -> str:
    if not SCHEMA_NAME_PATTERN.fullmatch(name):
        raise errors.ConfigurationError(
            f"invalid schema name {name!r}: 1 to 40 letters, digits or '_', not a digit first"
        )
    return name


@dataclass(slots=True)
class Message(Generic[P]):
    """One leased message. ``lease_token`` fences archive/fail/extend to this delivery."""

    id: int
    payload: P
    attempts: int
    enqueued_at: datetime
    lease_expires_at: datetime
    lease_token: int
    priority: int = 0
    last_error: str | None = None
    # The previous delivery's lease ran out unsettled: its consumer may have crashed on it.
    after_expired_lease: bool = False
    # The pack this message was delivered in (migration 0005), None if it was stored alone.
    # Settling a whole pack takes one statement; anything else unpacks it first (it stays
    # set after an unpack, which a rollback can undo).
    pack_id: int | None = None


@dataclass(frozen=True, slots=True)
class QueueInfo:
    id: int
    name: str
    lease_seconds: float
    max_attempts: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    max_payload_bytes: int
    paused: bool
    created_at: datetime

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> QueueInfo:
        return cls(*row)


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: str
    ready: int
    leased: int
    delayed: int
    archived: int
    dead: int
    oldest_ready_age: float
    archived_last_minute: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    payload: Any
    attempts: int
    last_error: str | None
    enqueued_at: datetime
    died_at: datetime
    priority: int = 0


@dataclass(frozen=True, slots=True)
class FailOutcome:
    """What fail_many did: ids back in the queue, ids dead-lettered. Others were not held."""

    retried: list[int] = field(default_factory=list)
    dead: list[int] = field(default_factory=list)
