"""`collectives` against calling torch.distributed directly, side by side in the same job.

    .venv/bin/python -m bench.bench_collectives [--nproc 2] [--max-bytes 256M] [--rounds 3]
        [--ops all_reduce,all_gather,broadcast] [--point-s 0.5] [--json out.json]

Starts `--nproc` gloo ranks on loopback itself, each with the torchrun variables that
`launcher.contract` gives a rank: the launcher's own start-up is not what is measured here.
In that one job:

Raw and wrapped calls are interleaved call by call (ABBA), each call timed on its own, and
compared by their medians: on a shared machine a neighbour's burst then hits both sides alike,
and descheduled calls do not drag the statistic. The whole measurement runs `--rounds` times
and each figure is the median round.

1. Small calls: `--small-calls` pairs of 4-byte all_reduce; median per call of each, and the
   difference.
2. Dispatch cost alone: `torch.distributed.all_reduce` replaced by a function that does
   nothing, 100,000 calls each way in one process (median of 7): the wrapper's own Python
   cost, free of communication noise.
3. A sweep from `--min-bytes` to `--max-bytes` for every op: about `--point-s` seconds of pairs
   per size (at least 10, at most `--max-pairs`, agreed by all ranks); median per call of
   each, their ratio, and nccl-tests busbw from the medians.

Results go to stdout as Markdown tables and, with `--json`, to a file.
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
from bench.common import ROOT, free_port
from collectives.bench import bus_factor, elements, make_call, parse_size, sizes
from launcher.contract import RankEnv

MODULE = "bench.bench_collectives"  # the ranks run this module again, with --worker


def _interleaved(
    raw: Callable[[], object], wrapped: Callable[[], object], pairs: int
) -> tuple[list[float], list[float]]:
    """Per-call seconds of `pairs` raw and wrapped calls, interleaved ABBA so that both see the
    same machine; every rank runs the same sequence."""
    clock = time.perf_counter
    raws, wraps = [], []
    collectives.barrier()
    for i in range(pairs):
        first, second = (raw, wrapped) if i % 2 == 0 else (wrapped, raw)
        t0 = clock()
        first()
        t1 = clock()
        second()
        t2 = clock()
        a, b = t1 - t0, t2 - t1
        raws.append(a if i % 2 == 0 else b)
        wraps.append(b if i % 2 == 0 else a)
    return raws, wraps


def _agreed_pairs(call: Callable[[], object], point_s: float, max_pairs: int) -> int:
    """Pairs for about `point_s` seconds of calls, the same on every rank (their max)."""
    for _ in range(3):
        call()
    collectives.barrier()
    t0 = time.perf_counter()
    call()
    one = time.perf_counter() - t0
    pairs = torch.tensor([max(10, min(max_pairs, math.ceil(point_s / 2 / max(one, 1e-7))))])
    return int(collectives.all_reduce(pairs, "max").item())


def _stats(raws: list[float], wraps: list[float]) -> dict[str, float]:
    r, w = statistics.median(raws), statistics.median(wraps)
    return {
        "raw_us": r * 1e6,
        "wrapped_us": w * 1e6,
        "diff_us": (w - r) * 1e6,
        "ratio": w / r,
        "mean_ratio": statistics.fmean(wraps) / statistics.fmean(raws),
    }


def small_calls(args: argparse.Namespace) -> dict[str, float]:
    """A 4-byte all_reduce, raw and wrapped, interleaved call by call."""
    t = torch.ones(1)
    raw = make_call("all_reduce", "torch", t, 1)
    wrapped = make_call("all_reduce", "collectives", t, 1)
    _interleaved(raw, wrapped, 500)  # warm-up
    return {"pairs": args.small_calls, **_stats(*_interleaved(raw, wrapped, args.small_calls))}


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
    """Every op and size: interleaved raw and wrapped calls; medians, ratio, bandwidths."""
    n = collectives.world_size()
    rows: list[dict[str, object]] = []
    for op in args.ops:
        for size in sizes(args.min_bytes, args.max_bytes):
            count, per_rank = elements(op, size, 4, n)
            t = torch.ones(per_rank)
            raw, wrapped = make_call(op, "torch", t, n), make_call(op, "collectives", t, n)
            pairs = _agreed_pairs(raw, args.point_s, args.max_pairs)
            st = _stats(*_interleaved(raw, wrapped, pairs))
            nbytes = count * 4
            algbw = nbytes / (st["wrapped_us"] * 1e-6) / 1e9
            raw_algbw = nbytes / (st["raw_us"] * 1e-6) / 1e9
            rows.append(
                {
                    "op": op,
                    "size": nbytes,
                    "pairs": pairs,
                    **st,
                    "algbw": algbw,
                    "busbw": algbw * bus_factor(op, n),
                    "raw_busbw": raw_algbw * bus_factor(op, n),
                }
            )
            if collectives.is_primary():
                print(f"  {op} {nbytes} B: ratio {st['ratio']:.4f}", file=sys.stderr, flush=True)
    return rows


def _median_rows(rounds: list[list[dict[str, object]]]) -> list[dict[str, object]]:
    """Per point, the round with the median ratio (so a row's figures come from one round)."""
    out = []
    for point in zip(*rounds, strict=True):
        ordered = sorted(point, key=lambda r: float(str(r["ratio"])))
        out.append({**ordered[len(ordered) // 2], "ratios": [r["ratio"] for r in point]})
    return out


def worker(args: argparse.Namespace) -> None:
    collectives.init(timeout=600)
    result: dict[str, object] = {"world_size": collectives.world_size(), "rounds": args.rounds}
    smalls, sweeps = [], []
    for _ in range(args.rounds):  # rounds minutes apart see different neighbours' load
        smalls.append(small_calls(args))
        sweeps.append(sweep(args))
    result["small"] = sorted(smalls, key=lambda r: r["diff_us"])[len(smalls) // 2]
    result["small_diffs_us"] = [r["diff_us"] for r in smalls]
    result["sweep"] = _median_rows(sweeps)
    if collectives.is_primary():
        result["dispatch"] = dispatch_cost(100_000, 7)
        Path(args.result).write_text(json.dumps(result))
    collectives.shutdown()


def launch(args: argparse.Namespace, argv: list[str]) -> dict[str, object]:
    """Run this module as `--nproc` ranks on this host; return the primary's result."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        procs = []
        for rank in range(args.nproc):
            place = RankEnv(rank, rank, args.nproc, args.nproc, 0, 1, "127.0.0.1", port)
            env = {**os.environ, "OMP_NUM_THREADS": "1", **place.torch_env()}
            cmd = [sys.executable, "-m", MODULE, *argv, "--worker", "--result", str(result)]
            procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL))
        codes = [p.wait() for p in procs]
        if any(codes):
            raise SystemExit(f"ranks failed: exit codes {codes}")
        data: dict[str, object] = json.loads(result.read_text())
        return data


def _fmt(values: object, digits: int = 2) -> str:
    assert isinstance(values, list)
    return ", ".join(f"{v:.{digits}f}" for v in values)


def report(data: dict[str, object], args: argparse.Namespace) -> None:
    small, disp = data["small"], data["dispatch"]
    assert isinstance(small, dict) and isinstance(disp, dict)
    n, rounds = data["world_size"], data["rounds"]
    print(f"\n{n} gloo ranks; per point the median over {rounds} rounds of per-call medians\n")
    print("| 4-byte all_reduce | torch.distributed | collectives | difference |")
    print("|---|---|---|---|")
    print(
        f"| per call, 2 ranks | {small['raw_us']:.1f} µs | {small['wrapped_us']:.1f} µs | "
        f"{small['diff_us']:+.2f} µs (rounds: {_fmt(data['small_diffs_us'])}) |"
    )
    print(
        f"| dispatch only (backend a no-op) | {disp['noop_us']:.2f} µs | "
        f"{disp['wrapped_noop_us']:.2f} µs | {disp['diff_us']:+.2f} µs |"
    )
    print(
        "\n| op | size | pairs | torch µs | collectives µs | ratio (rounds) | busbw GB/s (torch) |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = data["sweep"]
    assert isinstance(rows, list)
    for r in rows:
        print(
            f"| {r['op']} | {r['size']} | {r['pairs']} | {r['raw_us']:.1f} | "
            f"{r['wrapped_us']:.1f} | {r['ratio']:.3f} ({_fmt(r['ratios'], 3)}) | "
            f"{r['busbw']:.3f} ({r['raw_busbw']:.3f}) |"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--ops", default="all_reduce,all_gather,broadcast")
    p.add_argument("--min-bytes", type=parse_size, default=parse_size("1K"))
    p.add_argument("--max-bytes", type=parse_size, default=parse_size("256M"))
    p.add_argument("--rounds", type=int, default=3, help="whole measurements, median taken")
    p.add_argument("--point-s", type=float, default=0.5, help="target seconds per size")
    p.add_argument("--max-pairs", type=int, default=2000)
    p.add_argument("--small-calls", type=int, default=5000, help="pairs of 4-byte calls")
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
