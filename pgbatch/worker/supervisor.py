"""The supervisor: N worker processes, restarted when they die, stopped together.

Each child is ``python -m pgbatch.worker.child`` in its own process group (so a terminal's
Ctrl-C reaches the supervisor only, which forwards one SIGTERM). The supervisor:

- forwards the first SIGTERM/SIGINT to every child and waits for them (each finishes its
  running batches within its grace period); a second signal SIGKILLs them and returns 1;
- restarts a child that dies unexpectedly, after a backoff that grows while children keep
  dying young; in ``until_empty`` mode a child that exits 0 has drained and is done;
- gives up (stops everything, returns the child's code) when a child cannot start as
  configured (exit 2), or when a first-generation child dies before it was ready (a wrong
  DSN, say): restarting would only repeat the error;
- with ``metrics_port``, serves Prometheus metrics of all children on that one port
  (prometheus-client's multiprocess mode, in a temporary directory it removes at the end).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pgbatch import errors
from pgbatch.operations import positive_int
from pgbatch.worker.adaptive import BatchSizeSetting, batch_sizer
from pgbatch.worker.child import DSN_ENV, EXIT_CONFIG, EXIT_FAILURE, EXIT_OK

log = logging.getLogger("pgbatch.worker.supervisor")

# A child that lived less than this died young: its restart waits longer each time.
YOUNG_SECONDS = 10.0
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
# After the first signal: the children's grace period, plus this, before SIGKILL.
CHILD_GRACE = 30.0
KILL_AFTER = CHILD_GRACE + 15.0
TICK = 0.1


@dataclass(eq=False)
class Child:
    slot: int
    process: subprocess.Popen[bytes]
    ready_fd: int
    parent_fd: int
    started: float = field(default_factory=time.monotonic)
    ready: bool = False


@dataclass(eq=False)
class Slot:
    index: int
    child: Child | None = None
    ever_ready: bool = False
    young_deaths: int = 0
    restart_at: float | None = None
    done: bool = False


class Supervisor:
    def __init__(
        self,
        app_path: str,
        *,
        processes: int,
        queues: Sequence[str] | None,
        concurrency: int,
        batch_size: BatchSizeSetting | None,
        until_empty: bool,
        metrics_port: int | None,
        dsn: str | None,
    ) -> None:
        self.app_path = app_path
        self.queues = list(queues or [])
        self.concurrency = concurrency
        self.batch_size = batch_size
        self.until_empty = until_empty
        self.metrics_port = metrics_port
        self.dsn = dsn
        self.slots = [Slot(i) for i in range(processes)]
        self.stopping = False
        self.stop_started = 0.0
        self.killed = False
        self.exit_code = EXIT_OK
        self.metrics_dir: str | None = None
        self.metrics_server: Any = None

    # --- the loop ---

    def run(self) -> int:
        previous = self.install_signals()
        try:
            self.start_metrics()
            for slot in self.slots:
                self.spawn(slot)
            while self.alive_or_pending():
                self.wait_tick()
                self.collect_ready()
                self.reap()
                self.restart_due()
                self.escalate()
            return EXIT_FAILURE if self.killed else self.exit_code
        finally:
            self.kill_all()
            self.restore_signals(previous)
            self.stop_metrics()

    def alive_or_pending(self) -> bool:
        return any(
            s.child is not None or (s.restart_at is not None and not self.stopping)
            for s in self.slots
        )

    def wait_tick(self) -> None:
        fds = [s.child.ready_fd for s in self.slots if s.child is not None and not s.child.ready]
        if fds:
            with contextlib.suppress(InterruptedError):
                select.select(fds, [], [], TICK)
        else:
            time.sleep(TICK)

    # --- children ---

    def command(self, slot: Slot, ready_fd: int, parent_fd: int) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "pgbatch.worker.child",
            self.app_path,
            "--concurrency",
            str(self.concurrency),
            "--ready-fd",
            str(ready_fd),
            "--parent-fd",
            str(parent_fd),
        ]
        # "--queue=NAME" in one argument: a name that starts with "-" is still a name.
        command += [f"--queue={queue}" for queue in self.queues]
        if self.batch_size is not None:
            command += ["--batch-size", str(self.batch_size)]
        if self.until_empty:
            command.append("--until-empty")
        if self.metrics_dir is not None and slot.index == 0:
            command.append("--publish-queue-depth")
        return command

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.dsn is not None:
            env[DSN_ENV] = self.dsn
        if self.metrics_dir is not None:
            env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        return env

    def spawn(self, slot: Slot) -> None:
        ready_read, ready_write = os.pipe()
        parent_read, parent_write = os.pipe()
        try:
            process = subprocess.Popen(
                self.command(slot, ready_write, parent_read),
                env=self.environment(),
                pass_fds=(ready_write, parent_read),
                process_group=0,
            )
        finally:
            os.close(ready_write)
            os.close(parent_read)
        slot.child = Child(slot.index, process, ready_read, parent_write)
        slot.restart_at = None
        log.info("started worker process %d (pid %d)", slot.index, process.pid)

    def collect_ready(self) -> None:
        for slot in self.slots:
            child = slot.child
            if child is None or child.ready:
                continue
            readable, _, _ = select.select([child.ready_fd], [], [], 0)
            if readable and os.read(child.ready_fd, 1) == b"R":
                child.ready = slot.ever_ready = True

    def reap(self) -> None:
        for slot in self.slots:
            child = slot.child
            if child is None or child.process.poll() is None:
                continue
            self.collect_ready()
            slot.child = None
            self.close_child(child)
            self.after_exit(slot, child, child.process.returncode)

    def after_exit(self, slot: Slot, child: Child, code: int) -> None:
        if self.stopping:
            return
        if self.until_empty and code == EXIT_OK:
            slot.done = True
            log.info("worker process %d drained its queues", slot.index)
            return
        if code == EXIT_CONFIG or not slot.ever_ready:
            log.error(
                "worker process %d %s before it started working: stopping",
                slot.index,
                describe_exit(code),
            )
            self.exit_code = EXIT_CONFIG if code == EXIT_CONFIG else EXIT_FAILURE
            self.begin_stop()
            return
        lived = time.monotonic() - child.started
        slot.young_deaths = slot.young_deaths + 1 if lived < YOUNG_SECONDS else 0
        delay = min(MAX_RESTART_DELAY, RESTART_DELAY * 2 ** max(0, slot.young_deaths - 1))
        slot.restart_at = time.monotonic() + delay
        log.warning(
            "worker process %d (pid %d) %s; restarting it in %.1fs",
            slot.index,
            child.process.pid,
            describe_exit(code),
            delay,
        )

    def restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            due = slot.restart_at is not None and slot.restart_at <= now
            if slot.child is None and due and not self.stopping:
                self.spawn(slot)

    def close_child(self, child: Child) -> None:
        for fd in (child.ready_fd, child.parent_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child.process.pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    def children(self) -> list[Child]:
        return [s.child for s in self.slots if s.child is not None]

    # --- stopping ---

    def begin_stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_started = time.monotonic()
        for child in self.children():
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)

    def escalate(self) -> None:
        if self.stopping and time.monotonic() - self.stop_started > KILL_AFTER:
            log.warning(
                "worker processes still running %.0fs after SIGTERM: killing them", KILL_AFTER
            )
            self.kill_all()

    def kill_all(self) -> None:
        for child in self.children():
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
        for slot in self.slots:
            if slot.child is not None:
                slot.child.process.wait()
                self.close_child(slot.child)
                slot.child = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if not self.stopping:
            log.info("%s: stopping the worker processes (signal again to kill them)", name)
            self.begin_stop()
        else:
            log.warning("%s again: killing the worker processes", name)
            self.killed = True
            for child in self.children():
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()

    def install_signals(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                previous[sig] = signal.signal(sig, self.on_signal)
            except ValueError:  # not the main thread: the caller handles signals
                log.debug("cannot handle %s outside the main thread", sig.name)
        return previous

    def restore_signals(self, previous: dict[int, Any]) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    # --- metrics ---

    def start_metrics(self) -> None:
        if self.metrics_port is None:
            return
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        self.metrics_dir = tempfile.mkdtemp(prefix="pgbatch-metrics-")
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.metrics_dir)  # type: ignore[no-untyped-call]
        self.metrics_server, _ = start_http_server(self.metrics_port, registry=registry)
        log.info("serving Prometheus metrics on port %d", self.metrics_port)

    def stop_metrics(self) -> None:
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        if self.metrics_dir is not None:
            shutil.rmtree(self.metrics_dir, ignore_errors=True)


def describe_exit(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def run_supervisor(
    app_path: str,
    *,
    processes: int = 1,
    queues: Sequence[str] | None = None,
    concurrency: int = 4,
    batch_size: BatchSizeSetting | None = None,
    until_empty: bool = False,
    metrics_port: int | None = None,
    dsn: str | None = None,
) -> int:
    """Runs ``processes`` worker processes of the App at ``app_path`` until stopped (or, with
    ``until_empty``, until each has drained); the exit code (0: stopped or drained cleanly;
    1: killed by a second signal, or a child failed to start; 2: bad configuration)."""
    positive_int(processes, "processes")
    positive_int(concurrency, "concurrency")
    if batch_size is not None:
        batch_sizer(batch_size)
    if metrics_port is not None and not 0 < metrics_port < 65536:
        raise errors.InvalidArgument(f"metrics_port must be a TCP port, got {metrics_port!r}")
    supervisor = Supervisor(
        app_path,
        processes=processes,
        queues=queues,
        concurrency=concurrency,
        batch_size=batch_size,
        until_empty=until_empty,
        metrics_port=metrics_port,
        dsn=dsn,
    )
    return supervisor.run()
