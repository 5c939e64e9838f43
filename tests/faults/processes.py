"""Starting, watching and killing the fault suite's worker processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.faults.worker_program import CONFIG_ENV

ROOT = Path(__file__).resolve().parents[2]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def wait_until(
    condition: Callable[[], bool], *, timeout: float, interval: float = 0.05, what: str = ""
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def environment(config: dict[str, Any]) -> dict[str, str]:
    return {**os.environ, CONFIG_ENV: json.dumps(config), "PYTHONPATH": str(ROOT)}


@dataclass
class WorkerProcess:
    """``python -m tests.faults.worker_program`` with its stderr in a log file."""

    config: dict[str, Any]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    generations: list[int] = field(default_factory=list)

    # Extra arguments: ["supervise", "N"] runs the supervisor instead of one worker.
    arguments: list[str] = field(default_factory=list)

    def start(self) -> WorkerProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.faults.worker_program", *self.arguments],
                cwd=ROOT,
                env=environment(self.config),
                stdout=log,
                stderr=log,
            )
        self.generations.append(self.process.pid)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def started_lines(self) -> int:
        return self.log().count(" started: queues ")

    def is_working(self) -> bool:
        """Alive, and this generation has logged that it started working."""
        return self.alive() and self.started_lines() >= len(self.generations)

    def wait_started(self, timeout: float = 30.0) -> None:
        """Until this generation logged that it started working."""
        expected = len(self.generations)
        wait_until(
            lambda: self.started_lines() >= expected or not self.alive(),
            timeout=timeout,
            what=f"worker {self.pid} to start",
        )
        assert self.alive(), f"worker exited at start:\n{self.log()[-3000:]}"

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> None:
        """One SIGTERM (a second one would mean "stop at once")."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code."""
        self.terminate()
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far (from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def stop_all(workers: list[WorkerProcess]) -> list[int]:
    """SIGTERM to every live worker at once, then each exit code."""
    for worker in workers:
        worker.terminate()
    return [worker.process.wait(timeout=30) for worker in workers if worker.process is not None]


def kill_all(workers: list[WorkerProcess]) -> None:
    """Cleanup after a failed test: nothing of ours keeps running."""
    for worker in workers:
        if worker.alive():
            worker.kill()
