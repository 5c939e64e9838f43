"""Consumer processes for the drain-like scenarios, started together on a signal.

Each child (``python -m benchmarks.child``) reads its JSON config from stdin, prepares
(imports, connections), prints ``ready``, waits for ``go``, works, and prints one JSON line
of results. Timing from ``go`` keeps interpreter start-up out of throughput figures while
still counting everything the consumer does once asked to work. Children's stderr goes to
a temporary file, quoted when one fails.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_ROOT = Path(__file__).resolve().parent.parent
READY = "ready"


class ChildFailed(RuntimeError):
    """A benchmark child exited badly or printed no result."""


def rss_kib(pid: int) -> int | None:
    """Current resident set size of ``pid`` in KiB (Linux /proc), None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


@dataclass(slots=True)
class RssSampler:
    """Samples the RSS of some processes every ``interval`` seconds in a thread."""

    pids: list[int]
    interval: float = 0.25
    samples: list[tuple[float, int]] = field(default_factory=list)  # (time, total KiB)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            sizes = [rss_kib(pid) for pid in self.pids]
            present = [s for s in sizes if s is not None]
            if present:
                self.samples.append((time.time(), sum(present)))


class Children:
    """A group of benchmark children of one mode, run as ``with Children(...) as group``."""

    def __init__(self, mode: str, configs: list[dict[str, Any]], *, timeout: float = 600.0) -> None:
        self.mode = mode
        self.configs = configs
        self.timeout = timeout
        self.processes: list[subprocess.Popen[str]] = []
        self.logs: list[IO[str]] = []
        self.go_time = 0.0

    def __enter__(self) -> Children:
        env = {**os.environ, "PYTHONPATH": _pythonpath()}
        for config in self.configs:
            log = tempfile.TemporaryFile("w+")  # closed in __exit__
            process = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.child", self.mode],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=_ROOT,
                env=env,
            )
            assert process.stdin is not None
            process.stdin.write(json.dumps(config) + "\n")
            process.stdin.flush()
            self.processes.append(process)
            self.logs.append(log)
        for index in range(len(self.processes)):
            line = self._read_line(index)
            if line != READY:
                raise ChildFailed(self._failure(index, f"expected {READY!r}, got {line!r}"))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def go(self) -> float:
        """Tells every child to start; the wall-clock time of the signal."""
        self.go_time = time.time()
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        return self.go_time

    def signal(self, signum: int = signal.SIGTERM) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def results(self) -> list[dict[str, Any]]:
        """Each child's JSON result, once it has exited 0."""
        deadline = time.monotonic() + self.timeout
        found = []
        for index, process in enumerate(self.processes):
            line = self._read_line(index, deadline)
            try:
                code = process.wait(timeout=max(0.0, deadline - time.monotonic()) + 5)
            except subprocess.TimeoutExpired:
                raise ChildFailed(self._failure(index, "did not exit in time")) from None
            if code != 0 or not line:
                raise ChildFailed(self._failure(index, f"exit code {code}"))
            found.append(json.loads(line))
        return found

    def _read_line(self, index: int, deadline: float | None = None) -> str:
        """The child's next line ('' at EOF); ChildFailed if none comes by the deadline."""
        stdout = self.processes[index].stdout
        assert stdout is not None
        limit = self.timeout if deadline is None else max(0.0, deadline - time.monotonic())
        # The child writes whole lines and flushes, so a readable pipe holds a full line.
        if not select.select([stdout], [], [], limit)[0]:
            raise ChildFailed(self._failure(index, f"said nothing for {limit:.0f} s"))
        return stdout.readline().strip()

    def _failure(self, index: int, what: str) -> str:
        log = self.logs[index]
        log.seek(0)
        tail = log.read().strip().splitlines()[-15:]
        return f"benchmark child {self.mode} #{index} {what}:\n" + "\n".join(tail)


def _pythonpath() -> str:
    existing = os.environ.get("PYTHONPATH")
    return str(_ROOT) if not existing else f"{_ROOT}{os.pathsep}{existing}"
