"""Collective bandwidth sweep, read like nccl-tests: `python -m collectives.bench` under a launcher.

Every rank runs the same sweep; the primary prints one table per operation (size, count, type,
time, algbw, busbw) and, with `--json`, one JSON object per line on stdout (the table then goes
to stderr). Definitions are nccl-tests' (doc/PERFORMANCE.md): `algbw = size / time`;
`busbw = algbw * 2(n-1)/n` for all_reduce, `(n-1)/n` for all_gather, `1` for broadcast; for
all_gather `size` is the gathered (output) size. The time is the mean per iteration over
`--iters` after `--warmup`, averaged over ranks. GB/s means 1e9 bytes per second.

`--impl torch` times `torch.distributed` directly instead of `collectives`, so the wrapper's
cost can be measured in the same job (bench/bench_collectives.py does that side by side).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

import collectives
from collectives import group

OPS = ("all_reduce", "all_gather", "broadcast")
DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int32": torch.int32,
    "int8": torch.int8,
}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True, slots=True)
class Result:
    """One row of the sweep."""

    op: str
    size: int  # bytes; for all_gather the gathered output
    count: int  # elements in `size`
    dtype: str
    time_us: float
    algbw: float  # GB/s
    busbw: float  # GB/s
    world_size: int
    backend: str
    impl: str


def parse_size(text: str) -> int:
    """'1K', '256M', '4KiB', '1048576' -> bytes. Raises `ValueError` on anything else."""
    found = re.fullmatch(r"\s*(\d+)\s*([KMG]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not found:
        raise ValueError(f"bad size {text!r}; use e.g. 1K, 64M, 1G")
    return int(found.group(1)) * _UNITS[found.group(2).upper()]


def sizes(min_bytes: int, max_bytes: int, factor: int = 2) -> list[int]:
    """Geometric sizes from `min_bytes` to `max_bytes` inclusive (nccl-tests' -b/-e/-f)."""
    if min_bytes <= 0 or max_bytes < min_bytes or factor < 2:
        raise ValueError(f"bad sweep {min_bytes}..{max_bytes} x{factor}")
    out, s = [], min_bytes
    while s <= max_bytes:
        out.append(s)
        s *= factor
    return out


def bus_factor(op: str, n: int) -> float:
    """nccl-tests' busbw / algbw ratio for `op` on `n` ranks."""
    if op == "all_reduce":
        return 2 * (n - 1) / n
    if op == "all_gather":
        return (n - 1) / n
    if op == "broadcast":
        return 1.0
    raise ValueError(f"unknown op {op!r}")


def elements(op: str, size: int, elem_bytes: int, n: int) -> tuple[int, int]:
    """(total elements, per-rank input elements) for `size` bytes; all_gather splits by rank."""
    count = max(size // elem_bytes, 1)
    if op == "all_gather":
        per_rank = max(count // n, 1)
        return per_rank * n, per_rank
    return count, count


def make_call(op: str, impl: str, tensor: torch.Tensor, n: int) -> Callable[[], object]:
    """A no-argument closure running one `op` on `tensor` through `impl` (buffers preallocated)."""
    out = [torch.empty_like(tensor) for _ in range(n)]
    if impl == "torch":
        raw: dict[str, Callable[[], object]] = {
            "all_reduce": lambda: dist.all_reduce(tensor),
            "all_gather": lambda: dist.all_gather(out, tensor),
            "broadcast": lambda: dist.broadcast(tensor, 0),
        }
        return raw[op]
    wrapped: dict[str, Callable[[], object]] = {
        "all_reduce": lambda: collectives.all_reduce(tensor),
        "all_gather": lambda: collectives.all_gather(tensor, out),
        "broadcast": lambda: collectives.broadcast(tensor, 0),
    }
    return wrapped[op]


def time_call(call: Callable[[], object], iters: int, warmup: int, cuda: bool) -> float:
    """Mean seconds per call after `warmup` calls, on this rank (ranks aligned by a barrier)."""
    for _ in range(warmup):
        call()
    if cuda:
        torch.cuda.synchronize()
    collectives.barrier()
    start = time.perf_counter()
    for _ in range(iters):
        call()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def mean_over_ranks(seconds: float, device: torch.device) -> float:
    """The mean of `seconds` over all ranks (nccl-tests' default `-a 1`)."""
    t = torch.tensor([seconds], dtype=torch.float64, device=device)
    return float(collectives.all_reduce(t, "mean").item())


def run_one(op: str, size: int, dtype: torch.dtype, args: argparse.Namespace) -> Result:
    """Measure one (op, size) point on every rank; every rank gets the same `Result`."""
    n = collectives.world_size()
    cuda = torch.cuda.is_available() and torch.cuda.device_count() > 0
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    elem = torch.empty((), dtype=dtype).element_size()
    count, per_rank = elements(op, size, elem, n)
    tensor = torch.ones(per_rank, dtype=dtype, device=device)
    seconds = time_call(make_call(op, args.impl, tensor, n), args.iters, args.warmup, cuda)
    seconds = mean_over_ranks(seconds, device)
    nbytes = count * elem
    algbw = nbytes / seconds / 1e9
    state = group.active()
    return Result(
        op=op,
        size=nbytes,
        count=count,
        dtype=str(dtype).removeprefix("torch."),
        time_us=seconds * 1e6,
        algbw=algbw,
        busbw=algbw * bus_factor(op, n),
        world_size=n,
        backend=state.backend if state is not None else "none",
        impl=args.impl,
    )


def header(op: str, n: int, backend: str) -> str:
    """The table heading for one operation."""
    return (
        f"# {op}  ranks {n}  backend {backend}\n"
        f"#{'size':>12} {'count':>12} {'type':>9} {'time':>10} {'algbw':>8} {'busbw':>8}\n"
        f"#{'(B)':>12} {'(elements)':>12} {'':>9} {'(us)':>10} {'(GB/s)':>8} {'(GB/s)':>8}"
    )


def row(r: Result) -> str:
    """One table line."""
    return (
        f" {r.size:>12} {r.count:>12} {r.dtype:>9} {r.time_us:>10.1f} "
        f"{r.algbw:>8.3f} {r.busbw:>8.3f}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (nccl-tests-like flags, long names)."""
    p = argparse.ArgumentParser(prog="python -m collectives.bench", description=__doc__)
    p.add_argument("--ops", default=",".join(OPS), help="comma-separated subset of %(default)s")
    p.add_argument("--min-bytes", type=parse_size, default=parse_size("1K"))
    p.add_argument("--max-bytes", type=parse_size, default=parse_size("256M"))
    p.add_argument("--factor", type=int, default=2, help="size multiplier between steps")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--impl", choices=("collectives", "torch"), default="collectives")
    p.add_argument("--backend", default="auto")
    p.add_argument("--timeout", type=float, default=600.0, help="collective timeout, seconds")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout, table on stderr")
    args = p.parse_args(argv)
    args.ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    if bad := [o for o in args.ops if o not in OPS]:
        p.error(f"unknown ops {bad}; choose from {list(OPS)}")
    if args.iters < 1 or args.warmup < 0:
        p.error("--iters must be >= 1 and --warmup >= 0")
    try:
        args.sizes = sizes(args.min_bytes, args.max_bytes, args.factor)
    except ValueError as exc:
        p.error(str(exc))
    return args


@collectives.record
def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; return the exit status."""
    args = parse_args(argv)
    collectives.init(args.backend, timeout=args.timeout)
    if args.impl == "torch" and not dist.is_initialized():
        raise SystemExit("--impl torch needs a launched job of more than one rank")
    primary = collectives.is_primary()
    table = sys.stderr if args.json else sys.stdout
    try:
        for op in args.ops:
            state = group.active()
            if primary:
                n, name = collectives.world_size(), state.backend if state else "none"
                print(header(op, n, name), file=table, flush=True)
            for size in args.sizes:
                result = run_one(op, size, DTYPES[args.dtype], args)
                if primary:
                    print(row(result), file=table, flush=True)
                    if args.json:
                        print(json.dumps(asdict(result)), flush=True)
    finally:
        collectives.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
