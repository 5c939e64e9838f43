"""The shapes of results, and the loop that runs a scenario's cases round after round.

A scenario measures named cases (``enqueue.pgbatch``, ``limit.insert_1000``...). Each case
runs once per round and the rounds interleave the cases, so a burst of noise from other
work on the server hits pgbatch and its PostgreSQL baseline alike. Figures are the median of
the rounds, with their range; comparisons are ratios of medians.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmarks.config import Options


@dataclass(slots=True)
class Measurement:
    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    target: float | None = None  # the absolute target, if it sets one

    @property
    def target_met(self) -> bool | None:
        median = self.median
        if self.target is None or median is None:
            return None
        return median >= self.target if self.higher_is_better else median <= self.target

    # Empty when a scenario failed before its first round finished.
    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def minimum(self) -> float | None:
        return min(self.values, default=None)

    @property
    def maximum(self) -> float | None:
        return max(self.values, default=None)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "label": self.label,
            "unit": self.unit,
            "values": self.values,
            "median": self.median,
            "min": self.minimum,
            "max": self.maximum,
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "target_met": self.target_met,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """``subject`` against ``baseline`` (measurement keys), with the issue's target if any."""

    label: str
    subject: str
    baseline: str
    target: float | None = None


@dataclass(slots=True)
class ScenarioResult:
    name: str
    title: str
    status: str = "ok"  # ok, skipped or failed
    reason: str | None = None
    measurements: list[Measurement] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def log(text: str) -> None:
    """Progress for the person watching; results go through the report."""
    print(f"  {text}", file=sys.stderr, flush=True)


@dataclass(frozen=True, slots=True)
class Case:
    key: str
    label: str
    unit: str
    run: Callable[[], float]
    higher_is_better: bool = True
    target: float | None = None


class Context:
    """What a scenario gets: the options, and the measurements of the whole sitting."""

    def __init__(self, options: Options, measurements: dict[str, Measurement]) -> None:
        self.options = options
        self.dsn = options.dsn
        self.sizes = options.sizes
        self.measurements = measurements

    def rounds(
        self, result: ScenarioResult, cases: list[Case], runs: int | None = None
    ) -> list[Measurement]:
        """Runs every case once per round, ``runs`` rounds (default: the --runs option)."""
        found = [self._measurement(case) for case in cases]
        result.measurements.extend(found)
        for round_number in range(1, (runs or self.options.runs) + 1):
            for case, measurement in zip(cases, found, strict=True):
                value = case.run()
                measurement.values.append(value)
                log(f"[{round_number}] {case.label}: {format_value(value, case.unit)}")
        return found

    def record(
        self,
        result: ScenarioResult,
        key: str,
        label: str,
        unit: str,
        values: list[float],
        *,
        higher_is_better: bool = True,
        target: float | None = None,
    ) -> Measurement:
        """A measurement taken otherwise than by rounds (e.g. tenths of one long run)."""
        measurement = Measurement(key, label, unit, list(values), higher_is_better, target)
        self.measurements[key] = measurement
        result.measurements.append(measurement)
        return measurement

    def _measurement(self, case: Case) -> Measurement:
        measurement = Measurement(
            case.key, case.label, case.unit, [], case.higher_is_better, case.target
        )
        self.measurements[case.key] = measurement
        return measurement


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    """``with stopwatch() as elapsed:``; ``elapsed()``: seconds since entry, frozen at exit."""
    start = time.perf_counter()
    end: list[float] = []
    yield lambda: (end[0] if end else time.perf_counter()) - start
    end.append(time.perf_counter())


def format_value(value: float, unit: str) -> str:
    if unit.endswith("/s"):
        return f"{value:,.0f} {unit}"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if unit == "x":
        return f"{value:.2f}x"
    return f"{value:,.1f} {unit}"


def ratio(measurements: dict[str, Measurement], comparison: Comparison) -> float | None:
    """Median of the subject over median of the baseline (inverted when lower is better)."""
    subject = measurements.get(comparison.subject)
    baseline = measurements.get(comparison.baseline)
    if subject is None or baseline is None:
        return None
    return _quotient(subject.median, baseline.median, subject.higher_is_better)


def round_ratios(measurements: dict[str, Measurement], comparison: Comparison) -> list[float]:
    """The ratio round by round (the n-th value of each), when both have the same rounds."""
    subject = measurements.get(comparison.subject)
    baseline = measurements.get(comparison.baseline)
    if subject is None or baseline is None or len(subject.values) != len(baseline.values):
        return []
    pairs = zip(subject.values, baseline.values, strict=True)
    found = [_quotient(s, b, subject.higher_is_better) for s, b in pairs]
    return [r for r in found if r is not None]


def _quotient(
    subject: float | None, baseline: float | None, higher_is_better: bool
) -> float | None:
    top, bottom = (subject, baseline) if higher_is_better else (baseline, subject)
    return top / bottom if top is not None and bottom else None
