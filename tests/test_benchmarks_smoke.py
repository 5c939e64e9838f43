"""The benchmark suite in smoke mode: it runs end to end and writes well-formed results.

Timings are never asserted: on a shared machine they mean nothing at these sizes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from benchmarks.scenarios import all_scenarios

ROOT = Path(__file__).resolve().parent.parent
STATUSES = {"ok", "skipped"}  # "failed" makes the run exit 1

# The whole suite at smoke sizes starts some forty processes: about 30 s on 2 busy cores.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(320)]


def _bench_schemas(dsn: str) -> set[str]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'"
        ).fetchall()
    return {row[0] for row in rows}


@pytest.fixture(scope="module")
def smoke_run(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench")
    before = _bench_schemas(pg_dsn)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--smoke",
            "--dsn",
            pg_dsn,
            "--output",
            str(out / "results.json"),
            "--markdown",
            str(out / "results.md"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return {
        "stdout": done.stdout,
        "doc": json.loads((out / "results.json").read_text()),
        "markdown": (out / "results.md").read_text(),
        "leftover_schemas": _bench_schemas(pg_dsn) - before,
    }


def test_every_scenario_runs_or_says_why_not(smoke_run: dict[str, Any]) -> None:
    scenarios = smoke_run["doc"]["scenarios"]
    assert [s["name"] for s in scenarios] == [s.name for s in all_scenarios()]
    for s in scenarios:
        assert s["status"] in STATUSES, (s["name"], s["reason"])
        if s["status"] == "skipped":
            assert s["reason"], s["name"]
        else:
            assert s["measurements"], s["name"]


def test_measurements_are_well_formed(smoke_run: dict[str, Any]) -> None:
    ok = [s for s in smoke_run["doc"]["scenarios"] if s["status"] == "ok"]
    keys = [m["key"] for s in ok for m in s["measurements"]]
    assert len(keys) == len(set(keys))
    for m in (m for s in ok for m in s["measurements"]):
        assert m["values"] and all(math.isfinite(v) for v in m["values"]), m
        assert m["min"] <= m["median"] <= m["max"], m
        assert m["unit"] and m["label"]
    for c in (c for s in ok for c in s["comparisons"]):
        assert c["subject"] in keys and c["baseline"] in keys, c
        assert c["ratio"] is None or (math.isfinite(c["ratio"]) and c["ratio"] > 0), c


def test_smoke_runs_once_per_case(smoke_run: dict[str, Any]) -> None:
    meta = smoke_run["doc"]["meta"]
    assert meta["options"]["smoke"] is True and meta["options"]["runs"] == 1
    enqueue = next(s for s in smoke_run["doc"]["scenarios"] if s["name"] == "enqueue")
    assert enqueue["measurements"]
    assert all(len(m["values"]) == 1 for m in enqueue["measurements"])


def test_environment_is_recorded(smoke_run: dict[str, Any]) -> None:
    meta = smoke_run["doc"]["meta"]
    assert meta["machine"]["nproc"] >= 1 and meta["machine"]["memory_mib"] > 0
    assert meta["versions"]["postgresql"] and meta["versions"]["psycopg"]
    for name in ("shared_buffers", "synchronous_commit", "fsync", "wal_level"):
        assert meta["settings"][name], name
    assert "password" not in json.dumps(meta).lower()


def test_markdown_and_console_name_each_result(smoke_run: dict[str, Any]) -> None:
    markdown, stdout = smoke_run["markdown"], smoke_run["stdout"]
    assert "| scenario | case | median | range | target |" in markdown
    for s in smoke_run["doc"]["scenarios"]:
        assert f"`{s['name']}`" in markdown and s["title"] in stdout
        for m in s["measurements"]:
            assert m["label"] in markdown


def test_scenarios_drop_their_schemas(smoke_run: dict[str, Any]) -> None:
    assert smoke_run["leftover_schemas"] == set()
