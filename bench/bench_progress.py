"""What hang detection costs: a rank's progress call, and the launcher watching 8 ranks.

    .venv/bin/python -m bench.bench_progress [--calls 1000000] [--repeats 7] [--watch-s 10]
        [--ranks 8] [--json out.json]

1. **Per call** (the rank's side, issue 14: at most ~1 µs): `launcher.contract.progress()`
   with a progress file attached (the stdlib writer; `collectives.progress` is the same
   function, and every collective makes one such call), one `collectives.section()` entered
   and left, and an empty Python function call for scale. Each is `--calls` calls timed with
   `timeit`, `--repeats` times; the median and the best per call are reported.
2. **Watching** (the launcher's side, at most 1 % of a core): `launcher.hangs.watch.Monitor`
   at its default interval over `--ranks` progress files that a separate process keeps
   ticking (about 1,000 times a second each), for `--watch-s` seconds. The CPU time of this
   process (the monitor is its only running thread) over the wall time is the share of a
   core. The cost of one sample of every file, timed alone, is reported too.

The machine is whatever runs this; docs/hangs.md names the one its figures came from.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from launcher import contract
from launcher.hangs.progress import prepare
from launcher.hangs.verdict import Policy
from launcher.hangs.watch import INTERVAL_S, Monitor

# The ticking process: stdlib only, started with the files' paths as arguments.
_TICKER = """
import sys, time
from launcher.contract import ProgressFile
files = [ProgressFile(p) for p in sys.argv[1:]]
while True:
    for f in files:
        f.tick()
    time.sleep(0.001)
"""


def per_call(fn: Callable[[], object], calls: int, repeats: int) -> dict[str, float]:
    """Median and best nanoseconds per call of `fn` over `repeats` runs of `calls` calls."""
    runs = [t / calls * 1e9 for t in timeit.repeat(fn, number=calls, repeat=repeats)]
    return {"median_ns": statistics.median(runs), "best_ns": min(runs)}


def call_costs(calls: int, repeats: int, folder: Path) -> dict[str, dict[str, float]]:
    path = prepare(folder, [0])[0].progress
    os.environ[contract.PROGRESS_FILE] = str(path)
    if contract.attach_progress() is None:
        raise SystemExit(f"could not attach {path}")

    def section() -> None:
        with contract.progress_section("bench"):
            pass

    def empty() -> None:
        return None

    return {
        "progress()": per_call(contract.progress, calls, repeats),
        "section() enter+leave": per_call(section, calls // 10, repeats),
        "empty call (scale)": per_call(empty, calls, repeats),
    }


def watch_cost(ranks: int, seconds: float, folder: Path) -> dict[str, float]:
    files = prepare(folder, range(ranks))
    paths = {rank: f.progress for rank, f in files.items()}
    ticker = subprocess.Popen(
        [sys.executable, "-c", _TICKER, *(str(p) for p in paths.values())],
        stdin=subprocess.DEVNULL,
    )
    try:
        verdicts: list[object] = []
        monitor = Monitor(paths, Policy(window_s=3600), verdicts.append)
        idle = threading.Event()  # never set: waits that no signal cuts short
        deadline = time.monotonic() + 10
        monitor.sample()
        while not all(s.attached for s in monitor.state().ranks):  # the ticker has started
            if time.monotonic() > deadline:
                raise SystemExit("the ticking process never attached its files")
            idle.wait(0.01)
            monitor.sample()
        samples = 2000
        t0 = time.perf_counter()
        for _ in range(samples):
            monitor.sample()
        sample_us = (time.perf_counter() - t0) / samples * 1e6
        cpu0, wall0 = time.process_time(), time.monotonic()
        monitor.start()
        idle.wait(seconds)
        monitor.stop()
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        counts = [s.count for s in monitor.state().ranks]
    finally:
        ticker.kill()
        ticker.wait()
    return {
        "ranks": ranks,
        "interval_s": INTERVAL_S,
        "wall_s": wall,
        "cpu_s": cpu,
        "core_percent": 100 * cpu / wall,
        "sample_us": sample_us,
        "min_count_seen": min(counts),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--watch-s", type=float, default=10.0)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-progress-") as tmp:
        calls = call_costs(args.calls, args.repeats, Path(tmp) / "calls")
        watching = watch_cost(args.ranks, args.watch_s, Path(tmp) / "watch")
    print(f"## Progress counting ({sys.version.split()[0]}, {os.cpu_count()} cores)\n")
    print("| call | median per call | best per call |\n|---|---|---|")
    for name, cost in calls.items():
        print(f"| `{name}` | {cost['median_ns']:.0f} ns | {cost['best_ns']:.0f} ns |")
    print(
        f"\n## Watching {watching['ranks']} ranks every {watching['interval_s']:g} s\n\n"
        f"| wall | CPU | share of a core | one sample of every rank |\n|---|---|---|---|\n"
        f"| {watching['wall_s']:.1f} s | {watching['cpu_s'] * 1e3:.1f} ms | "
        f"{watching['core_percent']:.3f} % | {watching['sample_us']:.1f} µs |"
    )
    if args.json:
        args.json.write_text(json.dumps({"calls": calls, "watching": watching}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
