"""The scenarios, registered by name in the order a full sitting runs them."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from benchmarks.harness import Context, ScenarioResult

ScenarioFunction = Callable[[Context, ScenarioResult], None]


class Skip(Exception):
    """Raised by a scenario that cannot run here; the reason is printed and recorded."""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    title: str
    run: ScenarioFunction


_REGISTRY: dict[str, Scenario] = {}
_MODULES = (
    "limit",
    "enqueue",
    "enqueue_profile",
    "drain",
    "drain_profile",
    "claim_horizon",
    "slow_io",
    "latency",
    "churn",
    "memory",
    "transparent",
)


def scenario(name: str, title: str) -> Callable[[ScenarioFunction], ScenarioFunction]:
    """Registers a scenario under ``name``."""

    def register(function: ScenarioFunction) -> ScenarioFunction:
        _REGISTRY[name] = Scenario(name, title, function)
        return function

    return register


def all_scenarios() -> list[Scenario]:
    for module in _MODULES:
        importlib.import_module(f"benchmarks.scenarios.{module}")
    return list(_REGISTRY.values())


def select(names: tuple[str, ...]) -> list[Scenario]:
    """The named scenarios in registry order; all when none is named."""
    scenarios = all_scenarios()
    unknown = set(names) - {s.name for s in scenarios}
    if unknown:
        raise SystemExit(f"unknown scenario(s) {sorted(unknown)}")
    return [s for s in scenarios if not names or s.name in names]
