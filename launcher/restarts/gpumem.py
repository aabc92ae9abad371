"""Between attempts on a GPU host: wait, bounded, until the ranks' GPU memory is released.

When a rank dies its process is gone at once, but the driver may take a moment to free its
GPU memory; a next attempt that starts meanwhile can fail with out-of-memory for no reason of
its own. Before the first attempt the launcher notes each GPU's used memory (`Baseline`);
after an attempt it polls until every GPU is back within `SLACK_MIB` of that, for at most
`WAIT_S` (NVRx uses the same 512 MiB and a bound of the same order). If the bound passes, it
logs which GPUs still hold memory and goes on: the next attempt's own error then says more
than a refusal would. A host without NVML (a CPU host) has no baseline and never waits.
`pynvml` is imported lazily, as everywhere in the launcher.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("launcher")

SLACK_MIB = 512
WAIT_S = 30.0
POLL_S = 0.1


class MemoryProbe(Protocol):
    """Used memory per GPU index, in MiB; None when there is no NVML (a CPU host)."""

    def used_mib(self) -> Mapping[int, int] | None: ...


class NvmlMemory:
    """The real probe: NVML's used memory of every device. Never raises."""

    def used_mib(self) -> Mapping[int, int] | None:
        from launcher.gpus import NvmlUnavailable, PynvmlProbe  # noqa: PLC0415

        try:
            PynvmlProbe().devices()  # the cheap CPU-host check first (no pynvml import)
            import pynvml  # noqa: PLC0415 - lazy: a CPU host never pays for it

            pynvml.nvmlInit()
        except (NvmlUnavailable, ImportError, OSError):
            return None
        except Exception:  # pynvml.NVMLError: NVML is there but unusable
            return None
        try:
            used = {}
            for i in range(pynvml.nvmlDeviceGetCount()):
                info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i))
                used[i] = int(info.used) // (1 << 20)
            return used
        except Exception:  # any NVML error: do not wait on a broken probe
            return None
        finally:
            pynvml.nvmlShutdown()


@dataclass(frozen=True, slots=True)
class Baseline:
    """Each GPU's used memory before the first attempt (empty: a CPU host)."""

    used_mib: Mapping[int, int]

    @classmethod
    def take(cls, probe: MemoryProbe) -> Baseline:
        return cls(dict(probe.used_mib() or {}))

    def wait_released(
        self,
        probe: MemoryProbe,
        *,
        wait_s: float = WAIT_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> bool:
        """Poll until every GPU is within `SLACK_MIB` of its baseline; True when it is, False
        (after a warning naming the GPUs) once `wait_s` passed. Returns at once on a CPU host.
        Polling is the only way: NVML has no event for freed memory."""
        if not self.used_mib:
            return True
        deadline = clock() + wait_s
        while True:
            held = self._held(probe.used_mib() or {})
            if not held:
                return True
            if clock() >= deadline:
                log.warning(
                    "GPU memory not released %.0f s after the attempt ended: %s; starting the"
                    " next attempt anyway",
                    wait_s,
                    ", ".join(f"GPU {i} {mib} MiB over" for i, mib in sorted(held.items())),
                )
                return False
            sleep(POLL_S)

    def _held(self, now: Mapping[int, int]) -> dict[int, int]:
        """GPU index -> MiB above baseline + slack."""
        return {
            i: used - base - SLACK_MIB
            for i, base in self.used_mib.items()
            if (used := now.get(i, 0)) > base + SLACK_MIB
        }
