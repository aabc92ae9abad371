"""The preflight's measurements, in a child process run with the job's own Python: the only
place torch is imported (`python -m launcher.preflight.probe SPEC`, the `ProbeSpec` as JSON in
argv, the rows as one JSON list on the last line of stdout).

What it times, each after a warm-up (a cold GPU's first matmuls run faster than sustained):

* compute: a matmul loop. GPUs (`probe_gpu`): BF16 8192³ on every GPU at once, TFLOPS per
  GPU, and a checksum of one product compared across the host's GPUs (silent corruption).
  CPU hosts: FP32 `CPU_MATMUL_N`³, GFLOPS for the host.
* memory: a copy; GB/s counts the bytes read plus the bytes written (as STREAM's copy does).
  GPUs also time pinned host-to-device copies.
* all_reduce within the host over every GPU (`torch.cuda.nccl`, one process): busbw as
  nccl-tests defines it, `algbw * 2(n-1)/n`. A CPU host runs no intra-host all_reduce.
* all_reduce across hosts, one rank per host (gloo on CPU, NCCL on each host's GPU 0), at
  `spec.master_addr:spec.port`; the number of calls is agreed as the ranks' maximum and the
  time is the ranks' mean (as `collectives.bench` reports it), so every host takes the same
  decisions. When the busbw is under `spec.floor_gbps` (or `spec.pairwise`),
  every pair of hosts is timed, in rounds of disjoint pairs (the circle method). Only node 0
  prints the job-wide rows.

Failure: any exception becomes one FAIL row naming the stage and the error (the host is then
named by the verdict), and the exit code stays 0; a child that dies or hangs is the caller's
to report (`step` names the host).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from launcher.preflight import probe_gpu
from launcher.preflight.probe_gpu import SECONDS, busbw, timed
from launcher.preflight.rows import ALL_HOSTS, FAIL, INFO, Row, to_wire
from launcher.preflight.thresholds import PAIR_SEP

CPU_MATMUL_N = 384
CROSS_BYTES = {"quick": 4 << 20, "full": 64 << 20}  # CPU hosts; GPU hosts x16
CPU_COPY_BYTES = 64 << 20
CROSS_WARMUP = 2  # all_reduce calls before any is timed (connections, buffers)
CROSS_MIN_ITERS = 3  # timed calls at least, whatever the budget


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    """What the child measures. `port` 0 (or one host): no cross-host all_reduce."""

    host: str
    node_rank: int
    n_hosts: int
    master_addr: str
    port: int
    level: str = "quick"
    floor_gbps: float | None = None
    pairwise: bool = False
    timeout_s: float = 60.0


def pair_rounds(n: int) -> list[list[tuple[int, int]]]:
    """Every pair of `n` nodes exactly once, in rounds of disjoint pairs (circle method)."""
    nodes: list[int | None] = [*range(n), *([None] if n % 2 else [])]
    m = len(nodes)
    rounds = []
    for _ in range(m - 1):
        pairs = []
        for i in range(m // 2):
            a, b = nodes[i], nodes[m - 1 - i]
            if a is not None and b is not None:
                pairs.append((min(a, b), max(a, b)))
        rounds.append(pairs)
        nodes = [nodes[0], nodes[-1], *nodes[1:-1]]
    return rounds


def main() -> int:
    spec = ProbeSpec(**json.loads(sys.argv[1]))
    rows: list[Row] = []
    stage = "import torch"
    try:
        import torch  # noqa: PLC0415 - the launcher stays torch-free: only this child imports it

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        stage = "compute"
        rows += probe_gpu.local(torch, spec, gpus) if gpus else _cpu_local(torch, spec)
        if spec.port and spec.n_hosts > 1:
            stage = "cross-host all_reduce"
            rows += _cross(torch, spec, gpus)
    except Exception as e:  # every failure becomes a FAIL row
        # A failure of the cross-host stage is the job's, not this host's: a host that never
        # joined makes every other host's all_reduce time out, and that host is named by its
        # own row (or by the leader, when its report never comes).
        cross = stage.startswith("cross")
        rows.append(
            Row(
                "allreduce.cross" if cross else f"probe.{stage.split()[0]}",
                ALL_HOSTS if cross else spec.host,
                "error",
                "",
                "no error",
                FAIL,
                detail=f"{stage} on {spec.host}: {type(e).__name__}: {e}"[:500],
            )
        )
    print(json.dumps([to_wire(r) for r in rows]), flush=True)
    return 0


def _cpu_local(torch: Any, spec: ProbeSpec) -> list[Row]:
    budget = SECONDS[spec.level]
    n = CPU_MATMUL_N
    a, b = torch.randn(n, n), torch.randn(n, n)
    mm = timed(lambda: torch.mm(a, b), budget, lambda: None)
    gflops = 2 * n**3 / mm / 1e9
    src = torch.ones(CPU_COPY_BYTES // 4)
    dst = torch.empty_like(src)
    per = timed(lambda: dst.copy_(src), budget, lambda: None)
    threads = torch.get_num_threads()
    return [
        Row(
            "cpu.matmul",
            spec.host,
            round(gflops, 2),
            "GFLOPS",
            detail=f"fp32 {n}^3 on {threads} threads",
            seconds=round(mm, 6),
        ),
        Row(
            "cpu.membw",
            spec.host,
            round(2 * CPU_COPY_BYTES / per / 1e9, 2),
            "GB/s",
            detail=f"copy of {CPU_COPY_BYTES >> 20} MiB",
            seconds=round(per, 6),
        ),
    ]


def _cross(torch: Any, spec: ProbeSpec, gpus: int) -> list[Row]:
    """The whole job's all_reduce, then (under the floor, or always with `pairwise`) every
    pair of hosts; the job-wide rows from node 0 only."""
    import torch.distributed as dist  # noqa: PLC0415 - with torch, in this child only

    backend = "nccl" if gpus else "gloo"
    device = "cuda:0" if gpus else "cpu"
    size = CROSS_BYTES[spec.level] * (16 if gpus else 1)
    n, me = spec.n_hosts, spec.node_rank
    dist.init_process_group(
        backend,
        init_method=f"tcp://{spec.master_addr}:{spec.port}",
        rank=me,
        world_size=n,
        # Half the child's time: a host that never joins is an error here, not a killed child.
        timeout=timedelta(seconds=spec.timeout_s / 2),
    )
    try:
        tensor = torch.ones(size // 4, device=device)
        sync = (lambda: torch.cuda.synchronize(0)) if gpus else (lambda: None)
        whole = _agreed_time(torch, dist, tensor, group=None, spec=spec, sync=sync, device=device)
        bw = busbw(size, whole, n)
        rows = [
            Row(
                "allreduce.cross",
                ALL_HOSTS,
                round(bw, 3),
                "GB/s",
                detail=f"{backend} busbw, {n} hosts, {size >> 20} MiB",
                seconds=round(whole, 6),
            )
        ]
        below = spec.floor_gbps is not None and bw < spec.floor_gbps
        if below or spec.pairwise:
            rows += _pairs(torch, dist, spec, size=size, device=device, sync=sync)
    finally:
        dist.destroy_process_group()
    return rows if me == 0 else []


def _agreed_time(
    torch: Any, dist: Any, tensor: Any, *, group: Any, spec: ProbeSpec, sync: Any, device: str
) -> float:
    """Seconds per all_reduce of `tensor` in `group`, the same on every member: the number of
    iterations is agreed as the members' maximum, the result is the members' mean (as
    `collectives.bench` averages over ranks), after `CROSS_WARMUP` warm-up calls."""
    for _ in range(CROSS_WARMUP):  # connections, buffers
        dist.all_reduce(tensor, group=group)
    sync()
    began = time.perf_counter()
    dist.all_reduce(tensor, group=group)
    sync()
    once = torch.tensor([time.perf_counter() - began], dtype=torch.float64, device=device)
    dist.all_reduce(once, op=dist.ReduceOp.MAX, group=group)
    budget = 2 * SECONDS[spec.level]
    iters = max(CROSS_MIN_ITERS, min(100, int(budget / max(float(once.item()), 1e-9))))
    began = time.perf_counter()
    for _ in range(iters):
        dist.all_reduce(tensor, group=group)
    sync()
    took = torch.tensor([(time.perf_counter() - began) / iters], dtype=torch.float64, device=device)
    dist.all_reduce(took, group=group)
    return float(took.item()) / int(dist.get_world_size(group))


def _pairs(
    torch: Any, dist: Any, spec: ProbeSpec, *, size: int, device: str, sync: Any
) -> list[Row]:
    n, me = spec.n_hosts, spec.node_rank
    rounds = pair_rounds(n)
    groups = {
        pair: dist.new_group(list(pair)) for r in rounds for pair in r
    }  # every rank, in order
    names = [""] * n
    dist.all_gather_object(names, spec.host)
    seen = torch.zeros(n, n, dtype=torch.float64, device=device)
    tensor = torch.ones(size // 4, device=device)
    for pairs in rounds:
        for pair in pairs:
            if me in pair:
                t = _agreed_time(
                    torch, dist, tensor, group=groups[pair], spec=spec, sync=sync, device=device
                )
                if me == pair[0]:
                    seen[pair] = t
        dist.barrier()
    dist.all_reduce(seen)
    rows = []
    for pairs in rounds:
        for a, b in pairs:
            t = float(seen[a, b].item())
            rows.append(
                Row(
                    "allreduce.pair",
                    f"{names[a]}{PAIR_SEP}{names[b]}",
                    round(busbw(size, t, 2), 3),
                    "GB/s",
                    verdict=INFO,
                    detail=f"{size >> 20} MiB between 2 hosts",
                    seconds=round(t, 6),
                )
            )
    return rows


if __name__ == "__main__":
    sys.exit(main())
