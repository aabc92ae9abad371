"""The import budget of `launcher run` and `train`: what their start-up pays for, in modules.

Start-up time is mostly imports (docs/benchmarks-launch.md measures it with `-X importtime`), and
every module a command imports is CPU each of its launches pays, on every host. These tests run
the real commands (two no-op ranks) under `python -X importtime` and count every module the
launcher process imported on its whole path, lazy imports included: a count, not a time, so the
test does not depend on the machine's load. A change that adds modules to the path must either
make them lazy or raise the budget here, on purpose, in review.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch
from tests.helpers.trees import write_tree

pytestmark = [pytest.mark.usefixtures("no_leaks"), pytest.mark.timeout(120)]

# Measured with the commands below, plus a small margin for the standard library's own changes.
# Python 3.11, this tree: `run` 144, `train` 159 (the SageMaker tree's 8 modules, and shutil
# with its compression modules for the code's copy, on top). Was 153 / 161: argparse's help
# formatter no longer imports shutil, and the hang code imports stacks and reports on use.
RUN_BUDGET = 149
TRAIN_BUDGET = 164
# Never on the start-up path of a plain job: the frameworks, the other commands' and backends'
# subpackages, and the heavy standard modules the path does not need.
NEVER = ("torch", "numpy", "psutil", "pynvml", "horovod", "mpi4py", "boto3", "tempfile", "tarfile")
RUN_NEVER = (
    *NEVER,
    "launcher.sagemaker",
    "launcher.control",
    "launcher.mpi",
    "launcher.local",
    "launcher.doctor",
)
TRAIN_NEVER = (*NEVER, "launcher.control", "launcher.mpi", "launcher.local", "launcher.doctor")


def imported(argv: list[str], env: dict[str, str], cwd: Path) -> list[str]:
    """Every module the launcher process imported while it ran `argv` to the end."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "launcher", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    names = [line.rsplit("|", 1)[1].strip() for line in lines[1:]]  # [0] is the header
    assert names, done.stderr[-3000:]
    return names


def offenders(names: list[str], never: tuple[str, ...]) -> list[str]:
    return [n for n in names if any(n == p or n.startswith(p + ".") for p in never)]


def test_run_imports_within_budget(tmp_path: Path, no_leaks: LeakWatch) -> None:
    env = {**os.environ, **no_leaks.env()}
    names = imported(["run", "--nproc-per-host", "2", "--no-python", "/bin/true"], env, tmp_path)
    assert not offenders(names, RUN_NEVER)
    assert len(names) <= RUN_BUDGET, f"{len(names)} modules: {sorted(names)}"


def test_train_imports_within_budget(tmp_path: Path, no_leaks: LeakWatch) -> None:
    base = write_tree(tmp_path / "ml", "algo-1", ["algo-1"], {}, "pass\n")
    env = {**os.environ, **no_leaks.env(), "SAGEMAKER_BASE_DIR": str(base)}
    names = imported(["train", "--nproc-per-host", "2"], env, tmp_path)
    assert not offenders(names, TRAIN_NEVER)
    assert len(names) <= TRAIN_BUDGET, f"{len(names)} modules: {sorted(names)}"
