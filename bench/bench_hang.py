"""Hang detection through the launcher: how fast a stuck rank is found, against torchrun, and
what watching costs.

    .venv/bin/python -m bench.bench_hang [--rounds 10] [--windows 5,30] [--torchrun-bound 60]
        [--watch-s 10] [--ranks 8] [--json out.json]

1. **Detection latency** (issue 14: at most the window + 2 s after the last progress): for
   each window, `--rounds` runs of `launcher run --nproc-per-host 2 --hang-timeout W` of
   tests/bin/hang_rank.py, where rank 1 sleeps instead of joining the 4th all_reduce. Two
   figures per run: the verdict's own "no progress for X s" (the launcher's clock, from the
   last progress of any rank to the verdict; output/failure's details line), and the wall
   time from the stuck rank's announcement to the launcher's exit (stacks taken, every rank
   stopped). The median of the rounds is reported.
2. **torchrun, the same stuck script** (`torchrun --nproc-per-node 2`): it detects nothing;
   it is given `--torchrun-bound` seconds after the stuck rank announced itself and then
   killed with every process it started ("not within N s"), once per window's row.
3. **Watching** (at most 1 % of a core): `launcher run --nproc-per-host --ranks` of a
   stdlib rank that reports progress every 10 ms, for `--watch-s` seconds once every rank
   runs; the launcher process's own CPU time (its threads: the monitor, the output pump, the
   waiters; not the ranks') over the wall time, with `--hang-timeout 30` and with `0` (off).

The machine is whatever runs this; docs/benchmarks.md names the one its figures came from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil

from bench.common import ROOT, VENV_BIN, byte_compile, median

HANG_RANK = str(ROOT / "tests" / "bin" / "hang_rank.py")
STUCK = ["sleep", "--stuck", "1", "--at", "4"]
POLL_S = 0.01
_QUIET = re.compile(r"^hang window: .*; no progress for ([0-9.]+) s$", re.M)

# A rank for the watching figure: stdlib only, progress every 10 ms, until stopped.
_TICKER = """
import os, sys, time
from launcher import contract
ready = os.environ["READY_DIR"]
open(os.path.join(ready, os.environ["RANK"]), "w").close()
while True:
    contract.progress()
    time.sleep(0.01)
"""


def _stage(ready_dir: Path, rank: int) -> str:
    try:
        return str(json.loads((ready_dir / f"rank-{rank}.json").read_text()).get("stage", ""))
    except (OSError, ValueError):
        return ""


def _wait(
    what: str, condition: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float
) -> float:
    """Poll `condition` (a callable) until true; fails when `proc` exits first or at the
    deadline. Returns when it became true (monotonic)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: the process exited ({proc.returncode}) first")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:g} s")
        time.sleep(POLL_S)
    return time.monotonic()


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill `proc` and every process it started (torchrun's agent leaves its workers)."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.wait()
    psutil.wait_procs(family, timeout=10)


def _env(ready_dir: Path, tmp: Path) -> dict[str, str]:
    return {
        **os.environ,
        "READY_DIR": str(ready_dir),
        "TMPDIR": str(tmp),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }


def _start(argv: list[str], ready_dir: Path, tmp: Path) -> subprocess.Popen[bytes]:
    """`argv` from the repository, with the ranks' environment and its output discarded."""
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=_env(ready_dir, tmp),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def launcher_round(window: float, tmp: Path) -> dict[str, float]:
    """One launcher run of the stuck script: the verdict's quiet time and the exit latency."""
    ready_dir, out = tmp / "ready", tmp / "output"
    ready_dir.mkdir()
    argv = [
        str(VENV_BIN / "python"),
        "-m",
        "launcher",
        "run",
        "--nproc-per-host",
        "2",
        "--hang-timeout",
        f"{window:g}",
        "--output-dir",
        str(out),
        HANG_RANK,
        *STUCK,
    ]
    proc = _start(argv, ready_dir, tmp)
    try:
        stuck = _wait("rank 1 stuck", lambda: _stage(ready_dir, 1) == "stuck", proc, 120)
        code = proc.wait(2 * window + 60)
        exited = time.monotonic()
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    if code != 124:
        raise RuntimeError(f"launcher exited {code}, not 124")
    found = _QUIET.search((out / "failure").read_text())
    if found is None:
        raise RuntimeError("no 'no progress for' line in output/failure")
    return {"verdict_s": float(found[1]), "exit_s": exited - stuck}


def torchrun_round(bound: float, tmp: Path) -> float | None:
    """torchrun with the same stuck script: seconds until it ended, None when it was still
    running `bound` seconds after the stuck rank announced itself (then killed)."""
    ready_dir = tmp / "ready"
    ready_dir.mkdir()
    argv = [str(VENV_BIN / "torchrun"), "--nproc-per-node", "2", HANG_RANK, *STUCK]
    proc = _start(argv, ready_dir, tmp)
    try:
        stuck = _wait("rank 1 stuck", lambda: _stage(ready_dir, 1) == "stuck", proc, 120)
        try:
            proc.wait(bound)
        except subprocess.TimeoutExpired:
            return None
        return time.monotonic() - stuck
    finally:
        _kill_tree(proc)


def watch_cpu(ranks: int, seconds: float, window: float, tmp: Path) -> dict[str, float]:
    """The launcher's own CPU over `seconds` of an `ranks`-rank job that keeps progressing."""
    ready_dir = tmp / "ready"
    ready_dir.mkdir()
    script = tmp / "ticker.py"
    script.write_text(_TICKER)
    argv = [
        str(VENV_BIN / "python"),
        "-m",
        "launcher",
        "run",
        "--nproc-per-host",
        str(ranks),
        "--hang-timeout",
        f"{window:g}",
        str(script),
    ]
    proc = _start(argv, ready_dir, tmp)
    try:
        _wait("every rank", lambda: len(list(ready_dir.iterdir())) >= ranks, proc, 120)
        me = psutil.Process(proc.pid)
        before, start = me.cpu_times(), time.monotonic()
        time.sleep(seconds)  # the measured interval itself, not a synchronisation
        after, wall = me.cpu_times(), time.monotonic() - start
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
    cpu = (after.user - before.user) + (after.system - before.system)
    return {"wall_s": wall, "cpu_s": cpu, "core_percent": 100 * cpu / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--windows", default="5,30", help="comma-separated seconds")
    parser.add_argument("--torchrun-bound", type=float, default=60.0)
    parser.add_argument("--watch-s", type=float, default=10.0)
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    windows = [float(w) for w in args.windows.split(",") if w.strip()]
    byte_compile()
    results: dict[str, object] = {"rounds": args.rounds, "windows": {}}
    with tempfile.TemporaryDirectory(prefix="bench-hang-") as tmp:
        base = Path(tmp)
        n = 0

        def fresh() -> Path:
            nonlocal n
            n += 1
            folder = base / f"run-{n}"
            folder.mkdir()
            return folder

        rows = []
        for window in windows:
            runs = [launcher_round(window, fresh()) for _ in range(args.rounds)]
            torch_s = torchrun_round(args.torchrun_bound, fresh())
            row = {
                "window_s": window,
                "verdict_s": median(r["verdict_s"] for r in runs),
                "exit_s": median(r["exit_s"] for r in runs),
                "runs": runs,
                "torchrun_s": torch_s,
            }
            rows.append(row)
            results["windows"][f"{window:g}"] = row  # type: ignore[index]
        watching = watch_cpu(args.ranks, args.watch_s, 30, fresh())
        off = watch_cpu(args.ranks, args.watch_s, 0, fresh())
        results["watching"] = {"on": watching, "off": off, "ranks": args.ranks}
    print(f"## Hangs ({sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.rounds})\n")
    print("| window | verdict after the last progress | launcher exit after the stall | torchrun |")
    print("|---|---|---|---|")
    for row in rows:
        t = row["torchrun_s"]
        torch_text = (
            f"not within {args.torchrun_bound:g} s" if t is None else f"ended after {t:.1f} s"
        )
        print(
            f"| {row['window_s']:g} s | {row['verdict_s']:.1f} s | {row['exit_s']:.1f} s | "
            f"{torch_text} |"
        )
    print(
        f"\n## The launcher watching {args.ranks} ranks for {args.watch_s:g} s\n\n"
        "| hang detection | launcher CPU | share of a core |\n|---|---|---|\n"
        f"| on (30 s) | {watching['cpu_s'] * 1e3:.0f} ms | {watching['core_percent']:.2f} % |\n"
        f"| off | {off['cpu_s'] * 1e3:.0f} ms | {off['core_percent']:.2f} % |"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
