"""Where a request's time goes in `serve`: py-spy samples every worker under load.

Starts `serve` (toolkit hooks by default: stdlib json in `input_fn`/`output_fn`, the same
work as the same-hooks comparison), drives it with the bench's load generator for `--seconds`,
and has `py-spy record --subprocesses --format raw` sample the master and its workers
meanwhile (idle samples dropped). Prints the functions with the largest share of the workers'
busy samples, by self time and by inclusive time (a function counted once per sample).

    .venv/bin/python -m bench.serve.profile --rows 32 --seconds 15
"""

from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.serve import loadgen
from bench.serve.run import HOST, MODELS, payload, start, stop, wait_ready
from bench.serve.stacks import STACKS

PY_SPY = str(Path(sys.executable).with_name("py-spy"))


def _frame_name(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: lines merged per function."""
    name, _, where = frame.partition(" (")
    path = where.rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(path).parts[-2:])})"


def summarise(raw: str, top: int) -> str:
    """Markdown tables of the top self and inclusive shares from py-spy's raw output."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = [_frame_name(frame) for frame in stack.split(";")]
        if not any("serving" in frame or "gunicorn" in frame for frame in frames):
            continue  # the master's idle loop, py-spy's own threads
        count = int(count_text)
        total += count
        self_counts[frames[-1]] += count
        for frame in set(frames):
            incl_counts[frame] += count
    out = [f"{total} busy samples", "", "| self % | function |", "|---|---|"]
    out += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in self_counts.most_common(top)]
    out += ["", "| inclusive % | function |", "|---|---|"]
    out += [f"| {100 * n / total:.1f} | `{f}` |" for f, n in incl_counts.most_common(top)]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--stack", default="ours-toolkit-hooks")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--model", choices=sorted(MODELS), default="mlp")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve-profile-") as tmp_name:
        tmp = Path(tmp_name)
        model = tmp / "model.pt"
        served = MODELS[args.model]
        served.save(model)
        run = start(STACKS[args.stack], model, tmp / "server", args.workers, served)
        try:
            wait_ready(run)
            request = loadgen.build_request(
                HOST,
                "/invocations",
                payload(args.rows, served.features),
                "application/json",
                "application/json",
            )
            loadgen.prewarm(HOST, run.port, request, concurrency=args.concurrency, seconds=3)
            out = tmp / "profile.txt"
            sampling = ["--format", "raw", "--rate", str(args.rate), "--nonblocking"]
            window = ["--duration", str(int(args.seconds)), "--output", str(out)]
            spy = subprocess.Popen(
                [
                    PY_SPY,
                    "record",
                    "--pid",
                    str(run.proc.pid),
                    "--subprocesses",
                    *sampling,
                    *window,
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)  # py-spy attaches before the measured load starts
            measured = loadgen.run(
                HOST,
                run.port,
                request,
                concurrency=args.concurrency,
                warmup_s=0,
                measure_s=args.seconds - 1.5,
            )
            spy.wait(timeout=args.seconds + 30)
            raw = out.read_text()
        finally:
            stop(run)
    print(f"{args.stack}, {args.rows} rows, {measured.rps:,.0f} req/s under py-spy")
    print(summarise(raw, args.top))
    print(f"\nload average {os.getloadavg()}")


if __name__ == "__main__":
    main()
