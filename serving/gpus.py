"""Which GPUs `serve`'s workers may use, found through NVML without initialising CUDA.

The master must not initialise CUDA (the workers fork from it), so devices are listed with NVML
(`nvidia-ml-py`, imported lazily) and never through torch. No NVML library, no driver or no
device all mean a CPU-only host.

Visibility follows the launcher's rules exactly (`launcher/gpus.py`; the two packages share no
code, and `tests/unit/test_visibility_table.py` runs one table of cases through both):

* `NVIDIA_VISIBLE_DEVICES`, the container runtime's variable, was applied when the container
  was made (NVML inside sees only those devices) and CUDA never reads it: `none` and `void`
  mean no GPU, a list of `GPU-` UUIDs keeps exactly those devices, in NVML's order; anything
  else (`all`, empty, host indices) changes nothing.
* `CUDA_VISIBLE_DEVICES`, then, as the CUDA runtime parses it: unset, every device; a list
  starting with `GPU-` is a list of UUID prefixes, each naming exactly one device, read up to
  the first entry that does not start with `GPU-` or names no single device; otherwise each
  entry is read like `strtoul` (`1gpu` is 1, ASCII digits only) up to the first invalid,
  negative or out-of-range entry. A device named twice empties the list; so does an empty or
  `-1` list hide every device. A `MIG-` list cannot be resolved to a device: no GPU.

The order is CUDA's: the variable's order. Each worker pins itself to one of these devices by
its full UUID, which names it whatever the caller's mask or `CUDA_DEVICE_ORDER`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_DIGITS = "0123456789"  # strtoul's digits: not every character str.isdigit() accepts


@dataclass(frozen=True, slots=True)
class Gpu:
    """One device as NVML numbers it on this host."""

    index: int
    uuid: str  # `GPU-...`: what a worker sets CUDA_VISIBLE_DEVICES to


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_devices() -> tuple[Gpu, ...]:
    """Every device NVML reports, in NVML's order; () when NVML or the driver is missing or
    fails (the host is then served on CPU)."""
    try:
        import pynvml  # noqa: PLC0415 - lazy: a CPU host never pays for it
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return ()
    try:
        return tuple(
            Gpu(index, _text(pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(index))))
            for index in range(pynvml.nvmlDeviceGetCount())
        )
    except pynvml.NVMLError:
        return ()
    finally:
        pynvml.nvmlShutdown()


def _by_runtime(devices: tuple[Gpu, ...], spec: str | None) -> tuple[Gpu, ...]:
    """NVIDIA_VISIBLE_DEVICES (module docstring)."""
    spec = (spec or "").strip()
    if spec in ("none", "void"):
        return ()
    entries = {part.strip() for part in spec.split(",")} - {""}
    if entries and all(entry.startswith("GPU-") for entry in entries):
        return tuple(device for device in devices if device.uuid in entries)
    # "", "all", or host indices: the runtime applied those when it made the container.
    return devices


def _strtoul(entry: str) -> int:
    """The leading integer of `entry` as `strtoul` reads it (one sign allowed), else -1."""
    body = entry.lstrip("+-")
    signs = len(entry) - len(body)
    digits = len(body) - len(body.lstrip(_DIGITS))
    if signs > 1 or digits == 0:
        return -1
    return int(entry[: signs + digits])


def _by_uuid(devices: tuple[Gpu, ...], spec: str) -> tuple[Gpu, ...]:
    prefixes: list[str] = []
    for entry in (part.strip() for part in spec.split(",")):
        if entry in prefixes:
            return ()  # the same prefix twice
        if not entry.startswith("GPU-"):
            break  # a UUID list takes UUIDs only: the rest is ignored
        prefixes.append(entry)
    chosen: list[Gpu] = []
    for prefix in prefixes:
        matches = [device for device in devices if device.uuid.startswith(prefix)]
        if len(matches) != 1:
            break  # unknown or ambiguous: CUDA ignores the rest of the list
        if matches[0] in chosen:
            return ()  # two prefixes of one device
        chosen.append(matches[0])
    return tuple(chosen)


def _by_index(devices: tuple[Gpu, ...], spec: str) -> tuple[Gpu, ...]:
    indices: list[int] = []
    for entry in spec.split(","):
        index = _strtoul(entry.strip())
        if index < 0:
            break
        if index in indices:
            return ()  # a repeated device empties the list, even past an out-of-range entry
        indices.append(index)
    chosen: list[Gpu] = []
    for index in indices:
        if index >= len(devices):
            break  # past the last device: ends the list like any other invalid entry
        chosen.append(devices[index])
    return tuple(chosen)


def _by_cuda(devices: tuple[Gpu, ...], spec: str | None) -> tuple[Gpu, ...]:
    """CUDA_VISIBLE_DEVICES (module docstring)."""
    if spec is None:
        return devices
    spec = spec.strip()
    if spec.startswith("MIG-"):
        return ()
    if spec.startswith("GPU-"):
        return _by_uuid(devices, spec)
    return _by_index(devices, spec)


def visible(
    environ: Mapping[str, str], devices: Callable[[], Sequence[Gpu]] = nvml_devices
) -> tuple[Gpu, ...]:
    """The GPUs `serve`'s workers may use, in CUDA's order; () on a CPU-only host."""
    found = tuple(devices())
    if not found:
        return ()
    found = _by_runtime(found, environ.get("NVIDIA_VISIBLE_DEVICES"))
    return _by_cuda(found, environ.get("CUDA_VISIBLE_DEVICES"))
