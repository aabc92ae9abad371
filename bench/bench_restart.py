"""Whole-job restarts: from the failing rank's exit to every rank of the next attempt running,
against `torchrun --max-restarts`, on the same failing script.

    .venv/bin/python -m bench.bench_restart [--rounds 10] [--json out.json]

The script is tests/bin/fail_once.py (standard library only): every rank writes the wall-clock
time it started, per attempt; in the first attempt, once every rank has started, the last rank
writes the time it exits and exits 1 while the others wait (as ranks blocked in a collective
do). Attempts are counted by each rank's own starts (`--count-starts 1`), since torchrun's
other nodes restart their workers with TORCHELASTIC_RESTART_COUNT still 0 (pytorch#108158; the
table shows what attempt 1's ranks saw). One figure per run: the
latest start of attempt 1's ranks minus the failing rank's exit time. Four set-ups, run in turn
each round (so that load on the machine falls on all of them alike), the median of the rounds:

1. one host, 2 ranks: `launcher run --nproc-per-host 2 --max-restarts 1` and
   `torchrun --nproc-per-node 2 --max-restarts 1`;
2. 3 simulated hosts, 1 rank each: `launcher local --hosts 3 --max-restarts 1` (three `train`
   launchers meeting on loopback; the leader decides, every host meets again) and three
   `torchrun --nnodes 3 --nproc-per-node 1 --max-restarts 1` agents with the c10d rendezvous on
   loopback (they re-rendezvous after the failure).

The machine is whatever runs this; docs/benchmarks.md names the one its figures came from.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import ROOT, VENV_BIN, byte_compile, free_port, median

SCRIPT = str(ROOT / "tests" / "bin" / "fail_once.py")
TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class Run:
    gap_s: float  # attempt 1's last rank start minus attempt 0's failing rank exit
    counts: tuple[str, ...]  # TORCHELASTIC_RESTART_COUNT as attempt 1's ranks saw it
    fresh_port: bool  # attempt 1's MASTER_PORT differs from attempt 0's


def _read(out: Path, ranks: int) -> Run:
    failed = json.loads((out / f"exit-0-{ranks - 1}.json").read_text())["time"]
    first = [json.loads((out / f"start-0-{r}.json").read_text()) for r in range(ranks)]
    second = [json.loads((out / f"start-1-{r}.json").read_text()) for r in range(ranks)]
    gap = float(max(s["time"] for s in second)) - float(failed)
    counts = tuple(str(s["restart_count"]) for s in second)
    return Run(gap, counts, first[0]["master_port"] != second[0]["master_port"])


def _run(argvs: Sequence[Sequence[str]], cwd: Path) -> None:
    """Run the commands side by side until all exit; raise unless every one exits 0."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,  # a timeout ends the whole group: torchrun's workers too
        )
        for argv in argvs
    ]
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"{proc.args!r} exited {proc.returncode}: {err.decode()[-2000:]}")
    if errors:
        raise RuntimeError("\n".join(errors))


def _script(out: Path, failing: int) -> list[str]:
    """The failing script's command: rank `failing` fails once every rank has started."""
    flags = ["--count-starts", "1", "--together", "1", "--ranks", str(failing)]
    return [SCRIPT, "--out", str(out), *flags]


def ours_one_host(folder: Path) -> Run:
    out = folder / "out"
    out.mkdir()
    argv = [str(VENV_BIN / "launcher"), "run", "--nproc-per-host", "2", "--max-restarts", "1"]
    _run([[*argv, *_script(out, 1)]], folder)
    return _read(out, 2)


def torchrun_one_host(folder: Path) -> Run:
    out = folder / "out"
    out.mkdir()
    argv = [str(VENV_BIN / "torchrun"), "--nproc-per-node", "2", "--max-restarts", "1"]
    argv += ["--master-port", str(free_port())]
    _run([[*argv, *_script(out, 1)]], folder)
    return _read(out, 2)


def ours_three_hosts(folder: Path) -> Run:
    out = folder / "out"
    out.mkdir()
    argv = [str(VENV_BIN / "launcher"), "local", "--hosts", "3", "--nproc-per-host", "1"]
    argv += ["--max-restarts", "1", "--job-dir", str(folder / "jobs")]
    _run([[*argv, *_script(out, 2)]], folder)
    return _read(out, 3)


def torchrun_three_hosts(folder: Path) -> Run:
    out = folder / "out"
    out.mkdir()
    port = free_port()
    argvs = []
    for _node in range(3):
        argv = [str(VENV_BIN / "torchrun"), "--nnodes", "3", "--nproc-per-node", "1"]
        argv += ["--max-restarts", "1", "--rdzv-backend", "c10d"]
        argv += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"bench-{port}"]
        argvs.append([*argv, *_script(out, 2)])
    _run(argvs, folder)
    return _read(out, 3)


SETUPS = {
    "ours, 1 host x 2 ranks": ours_one_host,
    "torchrun, 1 host x 2 ranks": torchrun_one_host,
    "ours, 3 hosts x 1 rank": ours_three_hosts,
    "torchrun, 3 nodes x 1 rank": torchrun_three_hosts,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    byte_compile()
    runs: dict[str, list[Run]] = {name: [] for name in SETUPS}
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp:
        for round_ in range(args.rounds):
            for name, setup in SETUPS.items():  # each in turn: load falls on all alike
                folder = Path(tmp) / f"{round_}-{setup.__name__}"
                folder.mkdir()
                runs[name].append(setup(folder))
    medians = {name: median(r.gap_s for r in found) for name, found in runs.items()}
    print(
        f"## Restarts ({sys.version.split()[0]}, {os.cpu_count()} cores, median of {args.rounds})\n"
    )
    print(
        "| set-up | failing rank's exit -> every rank of attempt 1 running (min-max) |"
        " vs torchrun | TORCHELASTIC_RESTART_COUNT in attempt 1 | fresh MASTER_PORT |"
    )
    print("|---|---|---|---|---|")
    pairs = (
        ("ours, 1 host x 2 ranks", "torchrun, 1 host x 2 ranks"),
        ("ours, 3 hosts x 1 rank", "torchrun, 3 nodes x 1 rank"),
    )
    for ours, theirs in pairs:
        for name in (ours, theirs):
            ratio = medians[name] / medians[theirs] if medians[theirs] else float("nan")
            counts = sorted({c for r in runs[name] for c in r.counts})
            fresh = sum(r.fresh_port for r in runs[name])
            low = min(r.gap_s for r in runs[name])
            high = max(r.gap_s for r in runs[name])
            print(
                f"| {name} | {medians[name]:.3f} s ({low:.3f}-{high:.3f}) | {ratio:.2f}x |"
                f" {', '.join(counts)} | {fresh} of {len(runs[name])} runs |"
            )
    if args.json:
        data = {name: [vars_of(r) for r in found] for name, found in runs.items()}
        args.json.write_text(json.dumps({"rounds": args.rounds, "runs": data}, indent=2))
    return 0


def vars_of(run: Run) -> dict[str, object]:
    return {"gap_s": run.gap_s, "counts": list(run.counts), "fresh_port": run.fresh_port}


if __name__ == "__main__":
    raise SystemExit(main())
