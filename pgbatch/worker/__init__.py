"""The worker runtime: batch handlers registered on an App, run by worker processes.

::

    app = pgbatch.App(dsn)

    @app.batch_handler("emails", batch_size=100)
    def send(batch: pgbatch.Batch[dict]) -> None: ...

    app.run_worker()                          # in this process, until SIGTERM/SIGINT
    # or: pgbatch worker myproject.tasks:app --processes 2   (a supervisor and its children)
"""

from pgbatch.worker.app import App, HandlerSpec
from pgbatch.worker.batch import Batch
from pgbatch.worker.report import WorkerReport

__all__ = ["App", "Batch", "HandlerSpec", "WorkerReport"]
