"""pgbatch: a PostgreSQL-backed job queue whose unit of work is a batch."""

from pgbatch import errors
from pgbatch.batching import AsyncPending, Pending
from pgbatch.client import AsyncClient, Client, connect, connect_async
from pgbatch.models import DeadLetter, FailOutcome, Message, QueueInfo, QueueStats
from pgbatch.queue import AsyncQueue, Queue
from pgbatch.worker import App, Batch, WorkerReport

__all__ = [
    "App",
    "AsyncClient",
    "AsyncPending",
    "AsyncQueue",
    "Batch",
    "Client",
    "DeadLetter",
    "FailOutcome",
    "Message",
    "Pending",
    "Queue",
    "QueueInfo",
    "QueueStats",
    "WorkerReport",
    "connect",
    "connect_async",
    "errors",
]
__version__ = "0.1.0"
