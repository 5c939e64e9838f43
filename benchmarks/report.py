"""Results as JSON (for machines), a console summary and a markdown section (for people).

The JSON document::

    {"meta": {...machine, versions, settings, options...},
     "scenarios": [{"name", "title", "status", "reason", "seconds", "notes",
                    "measurements": [{"key", "label", "unit", "values", "median", "min",
                                      "max", "higher_is_better", "target",
                                      "target_met"}],
                    "comparisons": [{"label", "subject", "baseline", "ratio",
                                     "round_ratios", "target", "met"}],
                    "tables": [{"title", "columns", "rows"}]}]}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.harness import Measurement, ScenarioResult, format_value, ratio, round_ratios


def comparison_rows(
    result: ScenarioResult, measurements: dict[str, Measurement]
) -> list[dict[str, Any]]:
    rows = []
    for comparison in result.comparisons:
        value = ratio(measurements, comparison)
        per_round = round_ratios(measurements, comparison)
        rows.append(
            {
                "label": comparison.label,
                "subject": comparison.subject,
                "baseline": comparison.baseline,
                "ratio": value,
                "round_ratios": per_round,
                "target": comparison.target,
                "met": None
                if value is None or comparison.target is None
                else value >= comparison.target,
            }
        )
    return rows


def document(
    meta: dict[str, Any], results: list[ScenarioResult], measurements: dict[str, Measurement]
) -> dict[str, Any]:
    return {
        "meta": meta,
        "scenarios": [
            {
                "name": r.name,
                "title": r.title,
                "status": r.status,
                "reason": r.reason,
                "seconds": round(r.seconds, 2),
                "notes": r.notes,
                "measurements": [m.as_json() for m in r.measurements],
                "comparisons": comparison_rows(r, measurements),
                "tables": r.details.get("tables", []),
            }
            for r in results
        ],
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")


def _figure(m: dict[str, Any]) -> str:
    return "no value" if m["median"] is None else format_value(m["median"], m["unit"])


def _range(m: dict[str, Any]) -> str:
    if len(m["values"]) < 2:
        return f"({len(m['values'])} run{'' if len(m['values']) == 1 else 's'})"
    low, high = format_value(m["min"], m["unit"]), format_value(m["max"], m["unit"])
    return f"{low} to {high}"


def _target(m: dict[str, Any]) -> str:
    if m.get("target") is None:
        return ""
    sign = "≥" if m["higher_is_better"] else "≤"
    verdict = {True: "met", False: "MISSED", None: "n/a"}[m["target_met"]]
    return f"{sign} {format_value(m['target'], m['unit'])}: {verdict}"


def _ratio(c: dict[str, Any]) -> str:
    if c["ratio"] is None:
        return "n/a"
    text = f"{c['ratio']:.2f}x"
    if len(c["round_ratios"]) > 1:
        text += f" (rounds {min(c['round_ratios']):.2f} to {max(c['round_ratios']):.2f})"
    if c["target"] is not None:
        text += f" (target ≥ {c['target']:.1f}x: {'met' if c['met'] else 'MISSED'})"
    return text


def console(doc: dict[str, Any]) -> str:
    """A plain-text summary: every figure with its range, every ratio."""
    lines = []
    for s in doc["scenarios"]:
        lines.append(f"== {s['title']} [{s['status']}{', ' + s['reason'] if s['reason'] else ''}]")
        for m in s["measurements"]:
            target = f"   target {_target(m)}" if m.get("target") is not None else ""
            lines.append(f"   {m['label']:<58} {_figure(m):>16}   range {_range(m)}{target}")
        for c in s["comparisons"]:
            lines.append(f"   ratio {c['label']:<52} {_ratio(c)}")
        for table in s["tables"]:
            lines.append(f"   -- {table['title']}")
            lines.append("      " + " | ".join(table["columns"]))
            lines.extend("      " + " | ".join(str(x) for x in row) for row in table["rows"])
    return "\n".join(lines)


def _md_table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return out


def _md_environment(meta: dict[str, Any]) -> list[str]:
    m, v, opts = meta["machine"], meta["versions"], meta["options"]
    settings = ", ".join(f"{k}={val}" for k, val in meta["settings"].items())
    return [
        f"Sitting of {meta['started_at']} against `{meta['server']}`"
        f" ({'smoke sizes' if opts['smoke'] else 'full sizes'}, {opts['runs']} runs).",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_mib']:,} MiB, {m['kernel']};"
        f" load average at start {m['load_average_1_5_15']}, at end"
        f" {meta.get('load_average_at_end', '?')}",
        f"- Versions: PostgreSQL {v['postgresql']}, Python {v['python']}, psycopg {v['psycopg']}"
        f" ({v['psycopg_impl']}, libpq {v['libpq']}), psycopg-pool {v['psycopg_pool']},"
        f" orjson {v['orjson']}, {v['pgbench']}, pgbatch {v['pgbatch']} at {v['git_commit']}",
        f"- Server settings: {settings}",
        "",
    ]


def _one_line(text: str | None) -> str:
    return (text or "").splitlines()[0] if text else ""


def markdown(doc: dict[str, Any]) -> str:
    """The section pasted into BENCHMARKS.md."""
    lines = _md_environment(doc["meta"])
    figures, ratios = [], []
    for s in doc["scenarios"]:
        name = f"`{s['name']}`"
        if s["status"] != "ok":
            figures.append([name, f"*{s['status']}: {_one_line(s['reason'])}*", "", "", ""])
        figures += [
            [name, m["label"], _figure(m), _range(m), _target(m)] for m in s["measurements"]
        ]
        ratios += [[name, c["label"], _ratio(c)] for c in s["comparisons"]]
    lines += [*_md_table(["scenario", "case", "median", "range", "target"], figures), ""]
    lines += _md_table(["scenario", "comparison", "ratio of medians"], ratios)
    for s in doc["scenarios"]:
        for table in s["tables"]:
            lines += ["", f"**{table['title']}**", ""]
            lines += _md_table(table["columns"], table["rows"])
    return "\n".join(lines) + "\n"
