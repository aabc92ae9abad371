"""Fixtures of the oracle suite: the real sagemaker-training 5.1.4 in its own virtualenv.

The virtualenv lives in `$ORACLE_VENV`, else `.cache/oracle-venv` in the repository root
(gitignored). It is built once (about 10-30 s: the toolkit is an sdist with a small C
extension and pulls boto3, numpy, scipy), under a file lock so that two pytest sessions do
not build it at the same time, and reused while its `train` is there, the installed version
is 5.1.4 and the toolkit imports. If pip cannot install the toolkit (no index reachable, no
compiler), every oracle test is skipped with pip's last lines as the reason; any other
failure is an error.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch

REPO = Path(__file__).resolve().parents[2]
TOOLKIT = "sagemaker-training==5.1.4"
OUR_TRAIN = REPO / ".venv" / "bin" / "train"
PIP_TIMEOUT_S = 900


def oracle_venv_dir() -> Path:
    return Path(os.environ.get("ORACLE_VENV") or REPO / ".cache" / "oracle-venv")


def _venv_works(venv: Path) -> bool:
    """The toolkit's `train` is there, at the right version, and imports with its deps."""
    if not (venv / "bin" / "train").exists():
        return False
    with tempfile.TemporaryDirectory(prefix="oracle-probe-") as base:
        probe = subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m, sagemaker_training.trainer;"
                " print(m.version('sagemaker-training'))",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            # Importing the toolkit creates <base>/code: give it a throw-away base.
            env={"PATH": "/usr/bin:/bin", "SAGEMAKER_BASE_DIR": base},
        )
    return probe.returncode == 0 and probe.stdout.strip() == TOOLKIT.split("==")[1]


def _build(venv: Path) -> None:
    """Build the venv in place (console-script shebangs hold its path); skip if pip fails."""
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", TOOLKIT],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
    )
    if pip.returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        tail = "\n".join((pip.stdout + pip.stderr).strip().splitlines()[-5:])
        pytest.skip(f"pip cannot install {TOOLKIT} for the oracle: {tail}")


@pytest.fixture(scope="session")
def oracle_venv() -> Path:
    """A virtualenv holding sagemaker-training 5.1.4 (built once, then reused)."""
    venv = oracle_venv_dir()
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / (venv.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if not _venv_works(venv):
            _build(venv)
        if not _venv_works(venv):
            pytest.fail(f"{venv} was built but does not hold a working {TOOLKIT}")
    return venv


@pytest.fixture(scope="session")
def oracle_train(oracle_venv: Path) -> list[str]:
    """The argv that runs the toolkit's `train` console script."""
    return [str(oracle_venv / "bin" / "train")]


@pytest.fixture(scope="session")
def our_train() -> list[str]:
    """The argv that runs our `train` console script from the project venv."""
    if not OUR_TRAIN.exists():
        pytest.fail(f"{OUR_TRAIN} is missing: run `make venv`")
    return [str(OUR_TRAIN)]


@pytest.fixture
def watched(no_leaks: LeakWatch) -> Iterator[LeakWatch]:
    """`no_leaks` under a name that reads well in the oracle tests."""
    yield no_leaks
