"""Every error pgbatch raises on purpose.

::

    PgBatchError
    ├── ConfigurationError          bad settings given to pgbatch itself
    │   └── InvalidDSN              a DSN that cannot be parsed
    ├── DatabaseError               PostgreSQL could not do what was asked
    │   ├── DatabaseUnavailable     cannot connect (names host and port, never a password)
    │   └── RetryableDatabaseError  lock or statement timeout, serialization failure: try again
    ├── QueueError
    │   ├── InvalidQueueName
    │   ├── QueueNotFound
    │   └── QueueAlreadyExists      create_queue(..., exist_ok=False) on an existing queue
    ├── InvalidArgument             non-positive batch size or lease, and the like
    ├── PayloadError                a payload that cannot be enqueued; its batch is not written
    │   ├── PayloadNotJSON          not JSON-serialisable (or holds NaN, Infinity, NUL)
    │   ├── PayloadTooLarge         above the queue's size limit
    │   └── PayloadValidationError  fails the queue's pydantic model
    ├── LeaseLost                   the caller no longer holds a message's lease
    ├── JobFailed                   a message awaited by its producer went to the dead letters
    └── ClientClosed                submit or result wait on a client that was closed

Errors from psycopg are translated into this tree in exactly one place, ``pgbatch.db``.
"""

from __future__ import annotations

from collections.abc import Sequence


class PgBatchError(Exception):
    """Root of every error pgbatch raises on purpose."""


class ConfigurationError(PgBatchError):
    """pgbatch itself was given settings it cannot use."""


class InvalidDSN(ConfigurationError):
    """The connection string cannot be parsed."""


class DatabaseError(PgBatchError):
    """PostgreSQL refused or failed an operation."""


class DatabaseUnavailable(DatabaseError):
    """No connection could be made to the server."""


class RetryableDatabaseError(DatabaseError):
    """A transient failure (lock timeout, statement timeout, serialization): retry later."""


class QueueError(PgBatchError):
    """A problem with a queue as a whole."""


class InvalidQueueName(QueueError, ValueError):
    """Queue names are identifiers: a letter or underscore, then letters, digits, ``_ . : -``."""


class QueueNotFound(QueueError, LookupError):
    """No queue by that name."""


class QueueAlreadyExists(QueueError):
    """The queue exists and the caller asked not to reuse it."""


class InvalidArgument(PgBatchError, ValueError):
    """An argument outside what the operation accepts."""


class PayloadError(PgBatchError, ValueError):
    """A payload that cannot be enqueued. ``index`` is its position in the batch."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class PayloadNotJSON(PayloadError):
    """The payload is not JSON: an unsupported type, NaN or Infinity, or a NUL character."""


class PayloadTooLarge(PayloadError):
    """The serialised payload is above the size limit."""

    def __init__(self, message: str, *, index: int | None = None, size: int, limit: int) -> None:
        super().__init__(message, index=index)
        self.size = size
        self.limit = limit


class PayloadValidationError(PayloadError):
    """The payload fails the queue's pydantic model. ``fields`` names the failing locations."""

    def __init__(
        self, message: str, *, index: int | None = None, fields: Sequence[str] = ()
    ) -> None:
        super().__init__(message, index=index)
        self.fields = tuple(fields)


class LeaseLost(PgBatchError):
    """The caller's lease on a message expired and someone else took it."""


class JobFailed(PgBatchError):
    """A message went to the dead letters; ``last_error`` is its final error."""

    def __init__(self, message_id: int, last_error: str | None) -> None:
        super().__init__(f"message {message_id} went to the dead letters: {last_error}")
        self.message_id = message_id
        self.last_error = last_error


class ClientClosed(PgBatchError):
    """The client was closed: no more submits, and result waits still open end."""
