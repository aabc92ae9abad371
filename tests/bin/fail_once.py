"""A rank for whole-job restarts: `python fail_once.py --out OUT [--fail N] [--code C] ...`.

Standard library only (fast to start). At start it records, in `OUT/start-<attempt>-<rank>.json`,
its pid, the time (`time.time()`), the restart variables, the master port and run id, the
checkpoint folder, and which pids of the previous attempt's ranks are still alive (there must
be none). In attempts below N (`--fail`, default 1) the ranks in `--ranks` (default: every rank)
report `--progress` units of progress, write `OUT/exit-<attempt>-<rank>.json` with the time
and exit with `--code` (default 1); the other ranks wait to be stopped, as a rank blocked in a
collective would. From attempt N on, every rank exits 0. With `--checkpoint`, rank 0 writes a
checkpoint-named file of step <attempt> in the checkpoint folder before failing. With
`--hang`, a failing rank stalls after its progress instead of exiting (a hang to be declared).
With `--together 1`, a failing rank first waits (10 s at most) until every rank of the attempt
has recorded its start, so that ranks fail together rather than before their peers exist.
With `--count-starts 1`, the attempt is the number of starts this rank recorded before, not
TORCHELASTIC_RESTART_COUNT: torchrun counts restarts per node (pytorch#108158), so its other
nodes restart their workers with a count of 0 (the benchmark records what each rank saw).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

from _common import rank, ready, write_json

from launcher import contract


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purpose (its parent has not reaped it yet).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--fail", type=int, default=1)
    p.add_argument("--code", type=int, default=1)
    p.add_argument("--ranks", default="")
    p.add_argument("--progress", type=int, default=0)
    p.add_argument("--checkpoint", action="store_true")
    p.add_argument("--hang", action="store_true")
    p.add_argument("--together", type=int, default=0)
    p.add_argument("--count-starts", type=int, default=0)
    args = p.parse_args()
    now = time.time()
    attempt = int(os.environ.get(contract.RESTART_COUNT, "0"))
    me = rank()
    if args.count_starts:
        attempt = len(glob.glob(os.path.join(args.out, f"start-*-{me}.json")))
    previous = []
    for path in glob.glob(os.path.join(args.out, f"start-{attempt - 1}-*.json")):
        with open(path, encoding="utf-8") as f:
            previous.append(json.load(f)["pid"])
    record = {
        "pid": os.getpid(),
        "time": now,
        "attempt": attempt,
        "restart_count": os.environ.get(contract.RESTART_COUNT),
        "max_restarts": os.environ.get(contract.MAX_RESTARTS),
        "master_port": os.environ.get(contract.MASTER_PORT),
        "run_id": os.environ.get(contract.RUN_ID),
        "checkpoint_dir": os.environ.get(contract.CHECKPOINT_DIR),
        "previous_alive": [pid for pid in previous if alive(pid)],
        "host": os.environ.get(contract.HOST, ""),
    }
    write_json(os.path.join(args.out, f"start-{attempt}-{me}.json"), record)
    failing = {int(r) for r in args.ranks.split(",") if r} or {me}
    if attempt >= args.fail:
        return 0
    if me not in failing:
        ready(stage="waiting")
        while True:
            time.sleep(3600)
    if args.together:
        world = int(os.environ.get(contract.WORLD_SIZE, "1"))
        names = [os.path.join(args.out, f"start-{attempt}-{r}.json") for r in range(world)]
        deadline = time.monotonic() + 10
        while not all(map(os.path.exists, names)) and time.monotonic() < deadline:
            time.sleep(0.001)  # a rank program, not a test: its peers start on their own
    for _ in range(args.progress):
        contract.progress()
    if args.checkpoint and me == 0:
        folder = os.environ[contract.CHECKPOINT_DIR]
        os.makedirs(folder, exist_ok=True)
        name = contract.checkpoint_name(attempt)
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write("x")
    if args.hang:
        ready(stage="hung")
        while True:
            time.sleep(3600)
    write_json(os.path.join(args.out, f"exit-{attempt}-{me}.json"), {"time": time.time()})
    return int(args.code)


if __name__ == "__main__":
    raise SystemExit(main())
