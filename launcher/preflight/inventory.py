"""A host's GPU inventory through NVML, and the rules that hold on one host.

`HealthProbe.read()` returns one `GpuHealth` per GPU (the real probe wraps pynvml, imported
lazily; tests pass a fake); `rows(host, gpus)` turns them into rows. Per GPU: ECC
(volatile uncorrectable errors, pending retired pages, pending or failed row remaps) and
throttle reasons (hardware slowdown, thermal, power brake) FAIL; other processes holding more
than `FOREIGN_MIB` of a GPU's memory FAIL (GCM's 15 MiB rule). Per host: the GPU count, model,
driver and CUDA versions as facts that `thresholds.judge` compares across hosts. A counter
NVML cannot read on this GPU (not supported) is left out, never guessed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from launcher.gpus import NVML_LIBRARY, NvmlUnavailable
from launcher.preflight.rows import FAIL, PASS, Row

log = logging.getLogger("launcher")

FOREIGN_MIB = 15  # memory another process may hold on a GPU before it counts (Meta GCM)
# NVML clocks-event reasons that mean the GPU is slowed by a fault, not by being idle.
HW_SLOWDOWN = 0x8
SW_THERMAL = 0x20
HW_THERMAL = 0x40
HW_POWER_BRAKE = 0x80
BAD_THROTTLE = {
    HW_SLOWDOWN: "hardware slowdown",
    SW_THERMAL: "software thermal slowdown",
    HW_THERMAL: "hardware thermal slowdown",
    HW_POWER_BRAKE: "power brake",
}


@dataclass(frozen=True, slots=True)
class GpuHealth:
    """What NVML says about one GPU. None: NVML cannot read it on this GPU."""

    index: int
    uuid: str
    name: str
    driver: str
    cuda: str  # the driver's CUDA version, "12.4"
    ecc_uncorrected: int | None = None  # volatile uncorrectable ECC errors
    retired_pending: bool | None = None  # pages waiting to be retired (pre-Ampere)
    remap_pending: bool | None = None  # row remaps waiting for a reset (Ampere on)
    remap_failed: bool | None = None
    throttle: int | None = None  # NVML clocks-event reasons bitmask
    foreign_mib: tuple[tuple[int, int], ...] = ()  # (pid, MiB) of other processes


class HealthProbe(Protocol):
    def read(self) -> Sequence[GpuHealth]:
        """Every GPU of the host. Raises `NvmlUnavailable` on a host without NVML."""


def _label(gpu: GpuHealth) -> str:
    return f"{gpu.index} {gpu.uuid}"


def rows(host: str, gpus: Sequence[GpuHealth]) -> list[Row]:
    """The inventory rows of `host` (no row at all on a CPU host: nothing to compare)."""
    if not gpus:
        return []
    first = gpus[0]
    out = [
        Row("gpu.count", host, float(len(gpus)), "GPUs"),
        Row("gpu.model", host, first.name),
        Row("gpu.driver", host, first.driver),
        Row("gpu.cuda", host, first.cuda),
    ]
    models = sorted({g.name for g in gpus})
    if len(models) > 1:  # one host mixing models: no fleet rule could say which is wrong
        out.append(
            Row(
                "gpu.model",
                host,
                " + ".join(models),
                verdict=FAIL,
                threshold="one model per host",
                detail="mixed GPU models",
            )
        )
    for gpu in gpus:
        out.extend(_gpu_rows(host, gpu))
    return out


def _gpu_rows(host: str, gpu: GpuHealth) -> list[Row]:
    label = _label(gpu)
    out: list[Row] = []
    if gpu.ecc_uncorrected is not None:
        bad = gpu.ecc_uncorrected > 0
        out.append(
            Row(
                "gpu.ecc",
                host,
                float(gpu.ecc_uncorrected),
                "errors",
                "== 0",
                FAIL if bad else PASS,
                label,
                "volatile uncorrectable ECC errors" if bad else "",
            )
        )
    pending = [
        what
        for what, flag in (
            ("pages pending retirement", gpu.retired_pending),
            ("row remap pending", gpu.remap_pending),
            ("row remap failed", gpu.remap_failed),
        )
        if flag
    ]
    if any(f is not None for f in (gpu.retired_pending, gpu.remap_pending, gpu.remap_failed)):
        out.append(
            Row(
                "gpu.memory_repair",
                host,
                "; ".join(pending) or "none",
                "",
                "none",
                FAIL if pending else PASS,
                label,
            )
        )
    if gpu.throttle is not None:
        reasons = [text for bit, text in BAD_THROTTLE.items() if gpu.throttle & bit]
        out.append(
            Row(
                "gpu.throttle",
                host,
                ", ".join(reasons) or "none",
                "",
                "none",
                FAIL if reasons else PASS,
                label,
            )
        )
    held = [(pid, mib) for pid, mib in gpu.foreign_mib if mib > FOREIGN_MIB]
    total = float(sum(mib for _, mib in gpu.foreign_mib))
    detail = ", ".join(f"pid {pid} holds {mib} MiB" for pid, mib in held)
    out.append(
        Row(
            "gpu.foreign_memory",
            host,
            total,
            "MiB",
            f"<= {FOREIGN_MIB} per process",
            FAIL if held else PASS,
            label,
            detail,
        )
    )
    return out


class PynvmlHealthProbe:
    """The real probe; `pynvml` imported when called. `own` are pids whose memory is ours."""

    def __init__(self, own: frozenset[int] = frozenset()) -> None:
        self.own = own

    def read(self) -> list[GpuHealth]:
        import ctypes  # noqa: PLC0415 - lazy: only a preflight reads NVML this way

        try:
            ctypes.CDLL(NVML_LIBRARY)
            import pynvml  # noqa: PLC0415 - lazy: a CPU host never pays for it
        except (OSError, ImportError) as e:
            raise NvmlUnavailable(str(e)) from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(str(e)) from None
        try:
            driver = _text(pynvml.nvmlSystemGetDriverVersion())
            version = int(pynvml.nvmlSystemGetCudaDriverVersion())
            cuda = f"{version // 1000}.{version % 1000 // 10}"
            count = pynvml.nvmlDeviceGetCount()
            return [self._gpu(pynvml, i, driver, cuda) for i in range(count)]
        finally:
            pynvml.nvmlShutdown()

    def _gpu(self, nv: Any, index: int, driver: str, cuda: str) -> GpuHealth:
        handle = nv.nvmlDeviceGetHandleByIndex(index)

        def read(call: Callable[[], Any]) -> Any:
            try:
                return call()
            except nv.NVMLError:  # not supported on this GPU: the check is left out
                return None

        ecc = read(
            lambda: nv.nvmlDeviceGetTotalEccErrors(
                handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
            )
        )
        retired = read(lambda: nv.nvmlDeviceGetRetiredPagesPendingStatus(handle))
        remap = read(lambda: nv.nvmlDeviceGetRemappedRows(handle))  # (corr, unc, pending, fail)
        throttle = read(lambda: nv.nvmlDeviceGetCurrentClocksThrottleReasons(handle))
        procs = read(lambda: nv.nvmlDeviceGetComputeRunningProcesses(handle)) or []
        foreign = tuple(
            (int(p.pid), int(p.usedGpuMemory or 0) // (1 << 20))
            for p in procs
            if int(p.pid) not in self.own
        )
        return GpuHealth(
            index=index,
            uuid=_text(nv.nvmlDeviceGetUUID(handle)),
            name=_text(nv.nvmlDeviceGetName(handle)),
            driver=driver,
            cuda=cuda,
            ecc_uncorrected=None if ecc is None else int(ecc),
            retired_pending=None if retired is None else bool(retired),
            remap_pending=None if remap is None else bool(remap[2]),
            remap_failed=None if remap is None else bool(remap[3]),
            throttle=None if throttle is None else int(throttle),
            foreign_mib=foreign,
        )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read(probe: HealthProbe | None = None) -> list[GpuHealth]:
    """Every GPU's health; [] on a host without NVML (said once in the log)."""
    try:
        return list((probe or PynvmlHealthProbe()).read())
    except NvmlUnavailable as e:
        log.info("preflight: no NVML (%s): no GPU inventory on this host", e)
        return []
