"""The GPU half of the probe child (`probe`): run inside it, with its torch passed in.

`local` times, on every GPU at once (CUDA launches are asynchronous, so one loop keeps all of
them busy; CUDA events time each device): a BF16 `GPU_MATMUL_N`³ matmul (TFLOPS) and one
product's checksum compared across the host's GPUs; a device copy (bytes read + written per
second); pinned host-to-device copies; and, with two GPUs or more, `torch.cuda.nccl.all_reduce`
over all of them (busbw). Raises whatever torch raises; `probe.main` turns it into a row.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launcher.preflight.rows import FAIL, Row

if TYPE_CHECKING:
    from launcher.preflight.probe import ProbeSpec

GPU_MATMUL_N = 8192
GPU_COPY_BYTES = 1 << 30
H2D_BYTES = 256 << 20
INTRA_BYTES = 256 << 20
SECONDS = {"quick": 0.15, "full": 2.0}  # time per measurement (the matmul: x4)


def timed(call: Callable[[], object], budget: float, sync: Callable[[], None]) -> float:
    """Seconds per call, sustained: warm up, then repeat for about `budget` seconds."""
    call()
    sync()
    began = time.perf_counter()
    call()
    sync()
    once = max(time.perf_counter() - began, 1e-9)
    iters = max(2, min(1000, int(budget / once)))
    began = time.perf_counter()
    for _ in range(iters):
        call()
    sync()
    return (time.perf_counter() - began) / iters


def busbw(size: int, seconds: float, n: int) -> float:
    """nccl-tests' all_reduce bus bandwidth in GB/s (1e9 bytes)."""
    return size / seconds * 2 * (n - 1) / n / 1e9 if n > 1 else size / seconds / 1e9


def local(torch: Any, spec: ProbeSpec, count: int) -> list[Row]:
    budget = SECONDS[spec.level]
    names = [torch.cuda.get_device_name(i) for i in range(count)]
    uuids = [str(getattr(torch.cuda.get_device_properties(i), "uuid", "")) for i in range(count)]
    label = [f"{i} GPU-{uuids[i]}" if uuids[i] else str(i) for i in range(count)]
    n = GPU_MATMUL_N
    gen = torch.Generator().manual_seed(0)
    host_a = torch.randn(n, n, generator=gen).bfloat16()
    host_b = torch.randn(n, n, generator=gen).bfloat16()
    mats = [(host_a.to(f"cuda:{i}"), host_b.to(f"cuda:{i}")) for i in range(count)]
    sums = [float(torch.mm(a, b).float().sum().item()) for a, b in mats]  # also the warm-up
    # Every GPU at once: launches are asynchronous, so one loop keeps all of them busy.
    per = _concurrent(torch, count, lambda i: torch.mm(*mats[i]), 4 * budget)
    rows = []
    for i in range(count):
        rows.append(
            Row(
                "gpu.matmul",
                spec.host,
                round(2 * n**3 / per[i] / 1e12, 1),
                "TFLOPS",
                gpu=label[i],
                detail=names[i],
                seconds=round(per[i], 6),
            )
        )
    majority = statistics.mode(sums)
    for i in range(count):
        same = sums[i] == majority
        rows.append(
            Row(
                "gpu.checksum",
                spec.host,
                "same" if same else "differs",
                "",
                "== the other GPUs",
                "PASS" if same else FAIL,
                label[i],
                "" if same else f"matmul checksum {sums[i]!r} != {majority!r}",
            )
        )
    mats.clear()  # the memory goes back before the copies
    bufs = [
        torch.empty(GPU_COPY_BYTES // 2, dtype=torch.bfloat16, device=f"cuda:{i}")
        for i in range(count)
    ]
    outs = [torch.empty_like(b) for b in bufs]
    per = _concurrent(torch, count, lambda i: outs[i].copy_(bufs[i]), budget)
    for i in range(count):
        rows.append(
            Row(
                "gpu.membw",
                spec.host,
                round(2 * GPU_COPY_BYTES / per[i] / 1e9, 1),
                "GB/s",
                gpu=label[i],
                detail=names[i],
                seconds=round(per[i], 6),
            )
        )
    bufs.clear()
    outs.clear()
    pinned = torch.empty(H2D_BYTES, dtype=torch.uint8).pin_memory()
    for i in range(count):
        dev = torch.empty(H2D_BYTES, dtype=torch.uint8, device=f"cuda:{i}")
        t = timed(
            functools.partial(dev.copy_, pinned, non_blocking=True),
            budget,
            functools.partial(torch.cuda.synchronize, i),
        )
        rows.append(
            Row(
                "gpu.h2d",
                spec.host,
                round(H2D_BYTES / t / 1e9, 1),
                "GB/s",
                gpu=label[i],
                detail=names[i],
                seconds=round(t, 6),
            )
        )
    if count > 1:
        tensors = [torch.ones(INTRA_BYTES // 4, device=f"cuda:{i}") for i in range(count)]
        t = timed(
            lambda: torch.cuda.nccl.all_reduce(tensors),
            budget,
            functools.partial(_sync_all, torch, count),
        )
        rows.append(
            Row(
                "allreduce.host",
                spec.host,
                round(busbw(INTRA_BYTES, t, count), 1),
                "GB/s",
                detail=f"{names[0]}: nccl busbw, {count} GPUs, {INTRA_BYTES >> 20} MiB",
                seconds=round(t, 6),
            )
        )
    return rows


def _sync_all(torch: Any, count: int) -> None:
    for i in range(count):
        torch.cuda.synchronize(i)


def _concurrent(
    torch: Any, count: int, call: Callable[[int], object], budget: float
) -> list[float]:
    """Seconds per call on each GPU, all GPUs running at once (CUDA events per device)."""
    for i in range(count):
        call(i)
    for i in range(count):
        torch.cuda.synchronize(i)
    began = time.perf_counter()
    call(0)
    torch.cuda.synchronize(0)
    iters = max(3, min(500, int(budget / max(time.perf_counter() - began, 1e-9))))
    events = []
    for i in range(count):
        with torch.cuda.device(i):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            events.append((start, end))
            start.record()
    for _ in range(iters):
        for i in range(count):
            with torch.cuda.device(i):
                call(i)
    for i in range(count):
        with torch.cuda.device(i):
            events[i][1].record()
    for i in range(count):
        torch.cuda.synchronize(i)
    return [events[i][0].elapsed_time(events[i][1]) / 1000 / iters for i in range(count)]
