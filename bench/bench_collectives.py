"""`collectives` against calling torch.distributed directly, side by side in the same job.

    .venv/bin/python bench/bench_collectives.py [--nproc 2] [--max-bytes 256M] [--repeats 5]
        [--ops all_reduce,all_gather,broadcast] [--json out.json]

Starts `--nproc` local gloo ranks (TODO(launcher): through `python -m launcher run` once it
exists; the ranks get the same torchrun variables from `launcher.contract`). In that one job:

1. Small calls: a 4-byte all_reduce, `--small-calls` calls per block, raw and wrapped blocks
   alternating, `--repeats` times (more for small calls); the median per-call time of each and
   the median of the per-repeat differences.
2. Dispatch cost alone: the same comparison with `torch.distributed.all_reduce` replaced by a
   function that does nothing, in one process, so the figure is the wrapper's own Python cost
   free of communication noise.
3. A sweep from `--min-bytes` to `--max-bytes`: for every op and size, raw and wrapped blocks
   alternate `--repeats` times (the iteration count per block is sized to about
   `--block-s` seconds and agreed by all ranks); medians, their ratio, and the nccl-tests
   algbw / busbw of both.

The machine is shared, so every figure is a median of repeats. Results go to stdout as
Markdown tables and, with `--json`, to a file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

import collectives
from collectives.bench import bus_factor, elements, make_call, parse_size, sizes
from launcher.contract import RankEnv


def _block(call: Callable[[], object], iters: int) -> float:
    """Seconds per call over one block, ranks aligned first."""
    collectives.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    return (time.perf_counter() - start) / iters


def _paired(
    raw: Callable[[], object], wrapped: Callable[[], object], iters: int, repeats: int
) -> tuple[list[float], list[float]]:
    """Per-call seconds of `repeats` raw and wrapped blocks, alternating which goes first."""
    raws, wraps = [], []
    for i in range(repeats):
        if i % 2 == 0:
            raws.append(_block(raw, iters))
            wraps.append(_block(wrapped, iters))
        else:
            wraps.append(_block(wrapped, iters))
            raws.append(_block(raw, iters))
    return raws, wraps


def _agreed_iters(call: Callable[[], object], block_s: float) -> int:
    """Iterations for a block of about `block_s` seconds, the same on every rank (their max)."""
    for _ in range(2):
        call()
    one = _block(call, 1)
    iters = torch.tensor([max(3, min(1000, math.ceil(block_s / max(one, 1e-7))))])
    return int(collectives.all_reduce(iters, "max").item())


def small_calls(args: argparse.Namespace) -> dict[str, float]:
    t = torch.ones(1)
    raw, wrapped = (
        make_call("all_reduce", "torch", t, 1),
        make_call("all_reduce", "collectives", t, 1),
    )
    for _ in range(200):
        raw(), wrapped()
    raws, wraps = _paired(raw, wrapped, args.small_calls, args.repeats * 3)
    return {
        "raw_us": statistics.median(raws) * 1e6,
        "wrapped_us": statistics.median(wraps) * 1e6,
        "diff_us": statistics.median(w - r for w, r in zip(wraps, raws, strict=True)) * 1e6,
    }


def dispatch_cost(calls: int, repeats: int) -> dict[str, float]:
    """The wrapper's own cost per all_reduce, with the backend call replaced by a no-op."""
    t = torch.ones(1)
    real = dist.all_reduce

    def noop(*_a: object, **_k: object) -> None:
        return None

    dist.all_reduce = noop
    try:
        raws, wraps = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                dist.all_reduce(t)
            raws.append((time.perf_counter() - start) / calls)
            start = time.perf_counter()
            for _ in range(calls):
                collectives.all_reduce(t)
            wraps.append((time.perf_counter() - start) / calls)
    finally:
        dist.all_reduce = real
    return {
        "noop_us": statistics.median(raws) * 1e6,
        "wrapped_noop_us": statistics.median(wraps) * 1e6,
        "diff_us": (statistics.median(wraps) - statistics.median(raws)) * 1e6,
    }


def sweep(args: argparse.Namespace) -> list[dict[str, object]]:
    n = collectives.world_size()
    rows: list[dict[str, object]] = []
    for op in args.ops:
        for size in sizes(args.min_bytes, args.max_bytes):
            count, per_rank = elements(op, size, 4, n)
            t = torch.ones(per_rank)
            raw, wrapped = make_call(op, "torch", t, n), make_call(op, "collectives", t, n)
            iters = _agreed_iters(raw, args.block_s)
            raws, wraps = _paired(raw, wrapped, iters, args.repeats)
            r, w = statistics.median(raws), statistics.median(wraps)
            # Pairs ran back to back, so their ratio cancels slow drifts of a shared machine.
            ratio = statistics.median(b / a for a, b in zip(raws, wraps, strict=True))
            nbytes = count * 4
            rows.append(
                {
                    "op": op,
                    "size": nbytes,
                    "iters": iters,
                    "raw_us": r * 1e6,
                    "wrapped_us": w * 1e6,
                    "ratio": ratio,
                    "raw_busbw": nbytes / r / 1e9 * bus_factor(op, n),
                    "busbw": nbytes / w / 1e9 * bus_factor(op, n),
                    "algbw": nbytes / w / 1e9,
                }
            )
            if collectives.is_primary():
                print(f"  {op} {nbytes} B: ratio {ratio:.4f}", file=sys.stderr, flush=True)
    return rows


def worker(args: argparse.Namespace) -> None:
    collectives.init(timeout=600)
    result: dict[str, object] = {"world_size": collectives.world_size()}
    result["small"] = small_calls(args)
    result["sweep"] = sweep(args)
    if collectives.is_primary():
        result["dispatch"] = dispatch_cost(args.small_calls * 10, args.repeats * 3)
        Path(args.result).write_text(json.dumps(result))
    collectives.shutdown()


def launch(args: argparse.Namespace, argv: list[str]) -> dict[str, object]:
    """Run this file as `--nproc` ranks on this host; return the primary's result."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        procs = []
        for rank in range(args.nproc):
            place = RankEnv(rank, rank, args.nproc, args.nproc, 0, 1, "127.0.0.1", port)
            env = {**os.environ, "OMP_NUM_THREADS": "1", **place.torch_env()}
            cmd = [sys.executable, __file__, *argv, "--worker", "--result", str(result)]
            procs.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"ranks failed: exit codes {codes}")
        data: dict[str, object] = json.loads(result.read_text())
        return data


def report(data: dict[str, object], args: argparse.Namespace) -> None:
    small, disp = data["small"], data["dispatch"]
    assert isinstance(small, dict) and isinstance(disp, dict)
    print(f"\n{data['world_size']} gloo ranks, medians of {args.repeats} or more repeats\n")
    print("| 4-byte all_reduce | torch.distributed | collectives | difference |")
    print("|---|---|---|---|")
    print(
        f"| per call, 2 ranks | {small['raw_us']:.1f} µs | {small['wrapped_us']:.1f} µs | "
        f"{small['diff_us']:+.2f} µs |"
    )
    print(
        f"| dispatch only (backend a no-op) | {disp['noop_us']:.2f} µs | "
        f"{disp['wrapped_noop_us']:.2f} µs | {disp['diff_us']:+.2f} µs |"
    )
    print("\n| op | size | iters | torch µs | collectives µs | ratio | busbw GB/s (torch) |")
    print("|---|---|---|---|---|---|---|")
    rows = data["sweep"]
    assert isinstance(rows, list)
    for r in rows:
        print(
            f"| {r['op']} | {r['size']} | {r['iters']} | {r['raw_us']:.1f} | "
            f"{r['wrapped_us']:.1f} | {r['ratio']:.4f} | {r['busbw']:.3f} ({r['raw_busbw']:.3f}) |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--ops", default="all_reduce,all_gather,broadcast")
    p.add_argument("--min-bytes", type=parse_size, default=parse_size("1K"))
    p.add_argument("--max-bytes", type=parse_size, default=parse_size("256M"))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--block-s", type=float, default=0.1, help="target seconds per block")
    p.add_argument("--small-calls", type=int, default=1000)
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    args = p.parse_args(argv)
    args.ops = args.ops.split(",")
    if args.worker:
        worker(args)
        return
    data = launch(args, [a for a in argv if a not in ("--worker",)])
    report(data, args)
    if args.json:
        Path(args.json).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
