"""GPU discovery through NVML (nvidia-ml-py), honouring the visibility variables.

`discover(environ)` returns the GPUs this host's ranks may use, in the order CUDA will number
them. `pynvml` is imported lazily, inside the probe, so `train` on a CPU host pays nothing;
on Linux the NVML library itself is tried first, so a CPU host does not even import pynvml.
No NVML library (or no driver) means a CPU host: an empty tuple, said once in the log.

Visibility follows what the ranks' CUDA runtime will see:

* `NVIDIA_VISIBLE_DEVICES` is the container runtime's variable, applied when the container is
  created: NVML inside already sees only those devices, numbered from 0, and CUDA never reads
  it. So `none` and `void` mean no GPU, a list of `GPU-` UUIDs keeps those devices (a no-op
  inside the container, and the intent outside one), and a list of host indices is not applied
  again: `2,3` in a two-GPU container would otherwise leave no GPU at all.
* `CUDA_VISIBLE_DEVICES` as the CUDA runtime parses it (torch's `_parse_visible_devices`
  models the same rules): a list starting with `GPU-` is a list of unique UUID prefixes, each
  of which must start with `GPU-`; otherwise each entry is read like `strtoul` (`1gpu` is 1). An
  invalid, negative, ambiguous or out-of-range entry ends the list; a repeated device empties
  it. `MIG-` lists cannot be resolved through device handles: no GPU (set the process count).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

log = logging.getLogger("launcher")

NVML_LIBRARY = "libnvidia-ml.so.1"  # the name pynvml loads on Linux


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
        if sys.platform.startswith("linux"):
            # The library pynvml would load, tried first: on a CPU host this answers in well
            # under a millisecond, where importing pynvml costs 20-50 ms of every launch.
            import ctypes  # noqa: PLC0415 - lazy, as pynvml

            try:
                ctypes.CDLL(NVML_LIBRARY)
            except OSError as e:
                raise NvmlUnavailable(f"{NVML_LIBRARY} cannot be loaded: {e}") from None
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


def _runtime_select(gpus: list[GpuInfo], spec: str | None) -> list[GpuInfo]:
    """NVIDIA_VISIBLE_DEVICES (see the module docstring)."""
    spec = (spec or "").strip()
    if spec in ("none", "void"):
        return []
    entries = [e.strip() for e in spec.split(",") if e.strip()]
    if entries and all(e.startswith("GPU-") for e in entries):
        wanted = set(entries)
        return [g for g in gpus if g.uuid in wanted]
    return gpus  # "", "all", or host indices the runtime has applied already


def _leading_int(entry: str) -> int:
    """`strtoul`'s reading of `entry`: its leading integer, or -1 when it has none."""
    signs = len(entry) - len(entry.lstrip("+-"))
    if signs > 1:
        return -1
    end = signs
    # ASCII digits only, as strtoul reads them: str.isdigit() also accepts "²" (which int()
    # refuses) and other scripts' digits (which CUDA does not read as numbers).
    while end < len(entry) and entry[end] in "0123456789":
        end += 1
    return int(entry[:end]) if end > signs else -1


def _cuda_select(gpus: list[GpuInfo], spec: str | None) -> list[GpuInfo]:
    """CUDA_VISIBLE_DEVICES (see the module docstring)."""
    if spec is None:
        return gpus
    spec = spec.strip()
    if spec.startswith("MIG-"):
        return []
    chosen: list[int] = []
    if spec.startswith("GPU-"):
        prefixes: list[str] = []
        for entry in (e.strip() for e in spec.split(",")):
            if entry in prefixes:
                return []  # a repeated device empties the list
            if not entry.startswith("GPU-"):
                break
            prefixes.append(entry)
        for prefix in prefixes:
            found = [i for i, g in enumerate(gpus) if g.uuid.startswith(prefix)]
            if len(found) != 1:
                break  # unknown or ambiguous: CUDA ignores the rest of the list
            if found[0] in chosen:
                return []
            chosen.append(found[0])
        return [gpus[i] for i in chosen]
    for entry in spec.split(","):
        index = _leading_int(entry.strip())
        if index < 0:
            break
        if index in chosen:
            return []
        chosen.append(index)
    # An index past the last device ends the list, as any other invalid entry does.
    valid = next((n for n, i in enumerate(chosen) if i >= len(gpus)), len(chosen))
    return [gpus[i] for i in chosen[:valid]]


def discover(environ: Mapping[str, str], probe: GpuProbe | None = None) -> tuple[GpuInfo, ...]:
    """The GPUs visible to this host's ranks, in CUDA order; () on a CPU host."""
    try:
        gpus = list((probe or PynvmlProbe()).devices())
    except NvmlUnavailable as e:
        log.info("no NVML (%s): treating this host as a CPU host", e)
        return ()
    gpus = _runtime_select(gpus, environ.get("NVIDIA_VISIBLE_DEVICES"))
    gpus = _cuda_select(gpus, environ.get("CUDA_VISIBLE_DEVICES"))
    return tuple(gpus)
