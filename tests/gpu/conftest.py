"""The GPU tier: runs only where an NVIDIA GPU and its driver are present."""

from __future__ import annotations

import shutil
import subprocess

import pytest


def _gpu_count() -> int:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
    return sum(line.startswith("GPU ") for line in result.stdout.splitlines())


GPUS = _gpu_count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="no NVIDIA GPU here (nvidia-smi -L lists none)")
    for item in items:
        if "tests/gpu/" in str(item.fspath):
            item.add_marker(pytest.mark.gpu)
            if GPUS == 0:
                item.add_marker(skip)
