"""Real NVML discovery and a real NCCL job across the local GPUs (skipped without a GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import gpus
from tests.gpu.conftest import GPUS
from tests.helpers.procwatch import LeakWatch

NCCL_PROGRAM = """
import os, torch, torch.distributed as dist
import collectives
env = collectives.init()
assert dist.get_backend() == "nccl", dist.get_backend()
t = torch.ones(1 << 20, device="cuda") * (env.rank + 1)
collectives.all_reduce(t)
n = env.world_size
assert t[0].item() == n * (n + 1) / 2, t[0].item()
print("NCCL_OK", env.rank, torch.cuda.current_device(), flush=True)
collectives.shutdown()
"""


def test_nvml_sees_what_nvidia_smi_lists() -> None:
    found = gpus.discover({})
    assert len(found) == GPUS
    assert len({g.uuid for g in found}) == GPUS
    assert all(g.memory_mib > 0 and g.pci_bus_id for g in found)


def test_cuda_visible_devices_picks_and_orders() -> None:
    everything = gpus.discover({})
    last = everything[-1]
    picked = gpus.discover({"CUDA_VISIBLE_DEVICES": str(len(everything) - 1)})
    assert [g.uuid for g in picked] == [last.uuid]
    assert [g.uuid for g in gpus.discover({"CUDA_VISIBLE_DEVICES": last.uuid})] == [last.uuid]


@pytest.mark.timeout(300)
def test_nccl_all_reduce_across_the_local_gpus(tmp_path: Path, no_leaks: LeakWatch) -> None:
    program = tmp_path / "nccl_job.py"
    program.write_text(NCCL_PROGRAM)
    result = subprocess.run(
        [sys.executable, "-m", "launcher", "run", "--nproc-per-host", "gpu", str(program)],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, **no_leaks.env()},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    ok = [line for line in result.stdout.splitlines() if "NCCL_OK" in line]
    assert len(ok) == GPUS, result.stdout
