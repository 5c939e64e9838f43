"""Runs the selected scenarios in one sitting and writes the results."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from benchmarks import environment, report
from benchmarks.config import Options
from benchmarks.harness import Context, Measurement, ScenarioResult
from benchmarks.scenarios import Scenario, Skip, select


def run_scenario(scenario: Scenario, context: Context) -> ScenarioResult:
    """One scenario; a Skip or an error is recorded, never raised."""
    result = ScenarioResult(scenario.name, scenario.title)
    print(f"-- {scenario.name}: {scenario.title}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        scenario.run(context, result)
    except Skip as skip:
        result.status, result.reason = "skipped", str(skip)
        print(f"  skipped: {skip}", file=sys.stderr, flush=True)
    except Exception as exc:
        result.status, result.reason = "failed", f"{type(exc).__name__}: {exc}"
        traceback.print_exc(file=sys.stderr)
    result.seconds = time.perf_counter() - start
    return result


def run(options: Options) -> int:
    """Runs the sitting; 1 if a scenario failed (a skip is not a failure), else 0."""
    meta = environment.describe(options.dsn)
    meta["options"] = {
        "runs": options.runs,
        "smoke": options.smoke,
        "only": list(options.only),
        "sizes": asdict(options.sizes),
    }
    measurements: dict[str, Measurement] = {}
    context = Context(options, measurements)
    results = [run_scenario(s, context) for s in select(options.only)]
    meta["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    doc = report.document(meta, results, measurements)
    report.write_json(options.output, doc)
    if options.markdown is not None:
        options.markdown.parent.mkdir(parents=True, exist_ok=True)
        options.markdown.write_text(report.markdown(doc), encoding="utf-8")
    print(report.console(doc))
    print(f"\nresults: {options.output}" + (f", {options.markdown}" if options.markdown else ""))
    return 1 if any(r.status == "failed" for r in results) else 0


def rerender(results: Path, markdown: Path) -> int:
    """Prints an earlier sitting's results and writes its markdown again (no measuring)."""
    doc = json.loads(results.read_text(encoding="utf-8"))
    markdown.parent.mkdir(parents=True, exist_ok=True)
    markdown.write_text(report.markdown(doc), encoding="utf-8")
    print(report.console(doc))
    return 0
