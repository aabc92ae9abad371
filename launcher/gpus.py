"""GPU discovery through NVML (nvidia-ml-py), honouring the visibility variables.

`discover(environ)` returns the GPUs this host's ranks may use, in the order CUDA will number
them. `pynvml` is imported lazily, inside the probe, so `train` on a CPU host pays nothing.
No NVML library (or no driver) means a CPU host: an empty tuple, said once in the log.

Visibility: `NVIDIA_VISIBLE_DEVICES` (the container runtime's choice: `all`, `none`, `void`,
indices or UUIDs) narrows the devices first; then `CUDA_VISIBLE_DEVICES` (indices into what
is left, or UUIDs / unique UUID prefixes) picks and orders them, stopping at the first invalid
entry exactly as the CUDA runtime does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("launcher")


@dataclass(frozen=True, slots=True)
class GpuInfo:
    index: int  # NVML index on this host
    name: str
    memory_mib: int
    uuid: str
    pci_bus_id: str
    cpu_affinity: tuple[int, ...]


class GpuProbe(Protocol):
    """What discovery needs from NVML; the real one wraps pynvml, tests pass a fake."""

    def devices(self) -> Sequence[GpuInfo]:
        """Every GPU of the host. Raises `NvmlUnavailable` when there is no NVML."""


class NvmlUnavailable(Exception):
    """No NVML library or driver: this is a CPU host."""


class PynvmlProbe:
    """The real probe. Imports `pynvml` (from nvidia-ml-py) only when called."""

    def devices(self) -> list[GpuInfo]:
        try:
            import pynvml  # noqa: PLC0415 - lazy: a CPU host never pays for it
        except ImportError as e:
            raise NvmlUnavailable(f"nvidia-ml-py is not installed ({e})") from None
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise NvmlUnavailable(str(e)) from None
        try:
            return [_device(pynvml, i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _device(pynvml: Any, index: int) -> GpuInfo:
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
    try:
        ncpu_words = 16  # 16 x 64-bit words: hosts of up to 1024 CPUs
        words = pynvml.nvmlDeviceGetCpuAffinity(handle, ncpu_words)
        cpus = tuple(w * 64 + b for w, word in enumerate(words) for b in range(64) if word >> b & 1)
    except pynvml.NVMLError:
        cpus = ()
    return GpuInfo(
        index=index,
        name=_text(pynvml.nvmlDeviceGetName(handle)),
        memory_mib=int(memory.total) // (1024 * 1024),
        uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
        pci_bus_id=_text(pynvml.nvmlDeviceGetPciInfo(handle).busId),
        cpu_affinity=cpus,
    )


def _select(gpus: list[GpuInfo], spec: str | None, *, runtime: bool) -> list[GpuInfo]:
    """Apply one visibility variable. `runtime` selects NVIDIA_VISIBLE_DEVICES semantics."""
    if spec is None:
        return gpus
    spec = spec.strip()
    if runtime:
        if spec in ("", "all"):
            return gpus
        if spec in ("none", "void"):
            return []
    chosen: list[GpuInfo] = []
    for entry in (e.strip() for e in spec.split(",")):
        match = _match(gpus, entry)
        if match is None or match in chosen:
            break  # CUDA ignores the rest of the list after an invalid entry
        chosen.append(match)
    return chosen


def _match(gpus: list[GpuInfo], entry: str) -> GpuInfo | None:
    if entry.isdigit():
        position = int(entry)
        return gpus[position] if position < len(gpus) else None
    if not entry:
        return None
    # CUDA accepts a full UUID or any unique prefix of one, with or without "GPU-".
    found = [g for g in gpus if g.uuid.startswith(entry) or g.uuid.startswith(f"GPU-{entry}")]
    return found[0] if len(found) == 1 else None


def discover(environ: Mapping[str, str], probe: GpuProbe | None = None) -> tuple[GpuInfo, ...]:
    """The GPUs visible to this host's ranks, in CUDA order; () on a CPU host."""
    try:
        gpus = list((probe or PynvmlProbe()).devices())
    except NvmlUnavailable as e:
        log.info("no NVML (%s): treating this host as a CPU host", e)
        return ()
    gpus = _select(gpus, environ.get("NVIDIA_VISIBLE_DEVICES"), runtime=True)
    gpus = _select(gpus, environ.get("CUDA_VISIBLE_DEVICES"), runtime=False)
    return tuple(gpus)
