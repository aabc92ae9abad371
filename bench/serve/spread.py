"""Spread of the throughput rounds: min-median-max per stack, and per-round ratios of chosen
pairs (A/B: A's req/s over B's in the same round, and the same for p99), so that a headline
ratio shows how far the rounds of a loaded machine scatter around it."""

from __future__ import annotations

from typing import Any

from bench.common import median


def mmm(values: list[float], fmt: str) -> str:
    """min - median - max of `values`, each formatted with `fmt`."""
    return " - ".join(format(v, fmt) for v in (min(values), median(values), max(values)))


def table(names: list[str], rows: list[int], load: list[dict[str, Any]]) -> str:
    """Markdown: req/s, p50 and p99 as min - median - max over the rounds."""
    out = [
        "| stack | rows | rounds | req/s min - median - max | p50 ms | p99 ms"
        " | server CPU ms/request |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for n in rows:
            runs = [r for r in load if r["stack"] == name and r.get("rows") == n]
            if runs:
                out.append(
                    f"| {name} | {n} | {len(runs)} | {mmm([r['rps'] for r in runs], ',.0f')} | "
                    f"{mmm([r['p50_ms'] for r in runs], '.2f')} | "
                    f"{mmm([r['p99_ms'] for r in runs], '.2f')} | {_cpu(runs)} |"
                )
    return "\n".join(out)


def _cpu(runs: list[dict[str, Any]]) -> str:
    values = [r["server_cpu_ms_per_request"] for r in runs if "server_cpu_ms_per_request" in r]
    return mmm(values, ".3f") if values else "-"


def pairs(spec: str, rows: list[int], load: list[dict[str, Any]]) -> str:
    """Lines `A / B, n rows: req/s x min - median - max, p99 x ...` for each `A/B` in `spec`
    (comma-separated), pairing the rounds both ran in the same group."""
    out = []
    for pair in filter(None, spec.split(",")):
        first, second = pair.split("/")
        for n in rows:
            mine = {
                (r["group"], r["round"]): r
                for r in load
                if r["stack"] == first and r.get("rows") == n
            }
            matched = [
                (mine[(r["group"], r["round"])], r)
                for r in load
                if r["stack"] == second and r.get("rows") == n and (r["group"], r["round"]) in mine
            ]
            if matched:
                rps = [a["rps"] / b["rps"] for a, b in matched]
                p99 = [a["p99_ms"] / b["p99_ms"] for a, b in matched]
                line = (
                    f"- {first} / {second}, {n} rows, {len(matched)} rounds: req/s "
                    f"{mmm(rps, '.2f')}x, p99 {mmm(p99, '.2f')}x"
                )
                key = "server_cpu_ms_per_request"
                if all(key in a and key in b for a, b in matched):
                    cpu = [a[key] / b[key] for a, b in matched]
                    line += f", server CPU per request {mmm(cpu, '.2f')}x"
                out.append(line)
    return "\n".join(out)
