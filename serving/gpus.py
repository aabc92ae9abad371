"""Which GPUs this host lets `serve` use, found through NVML without initialising CUDA.

The master must not initialise CUDA (the workers fork from it), so GPUs are counted with NVML
(`nvidia-ml-py`, imported lazily) and never through torch. No NVML library, no driver or no
device all mean a CPU-only host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping


def nvml_device_count() -> int:
    """The number of GPUs NVML reports; 0 when NVML or the driver is missing."""
    try:
        import pynvml  # noqa: PLC0415
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return 0
    try:
        return int(pynvml.nvmlDeviceGetCount())
    except pynvml.NVMLError:
        return 0
    finally:
        pynvml.nvmlShutdown()


def visible_gpus(
    environ: Mapping[str, str], device_count: Callable[[], int] = nvml_device_count
) -> tuple[str, ...]:
    """The GPU ids workers may pin themselves to, as CUDA_VISIBLE_DEVICES entries.

    With CUDA_VISIBLE_DEVICES set, its entries (indices or UUIDs) are the answer, limited to
    the number of devices that exist; an empty value or -1 hides every GPU, as in CUDA.
    Without it, every device NVML reports, by index.
    """
    count = device_count()
    if count <= 0:
        return ()
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return tuple(str(index) for index in range(count))
    entries: list[str] = []
    for entry in (part.strip() for part in raw.split(",")):
        # CUDA stops at the first invalid entry; -1 is the usual way to hide every device.
        if not entry or entry.startswith("-"):
            break
        entries.append(entry)
    return tuple(entries[:count])
