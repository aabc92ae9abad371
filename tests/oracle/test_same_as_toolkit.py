"""Our `train` gives the user program exactly what sagemaker-training 5.1.4's `train` gives it.

For every tree of tests/oracle/trees.py, the same dump program runs under the toolkit (in its
own virtualenv, tests/oracle/conftest.py) and under ours, each on a fresh copy of the tree at
the same path; every SM_* variable, SM_TRAINING_ENV key by key, argv, the interpreter's argv,
cwd, the first PYTHONPATH entry, CURRENT_HOST, SAGEMAKER_JOB_NAME and SAGEMAKER_REGION must
be equal, and so must what code/ holds afterwards. Deliberate differences are asserted in
test_differences.py, not here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch
from tests.oracle import harness
from tests.oracle.trees import TREES, Tree

pytestmark = [pytest.mark.oracle, pytest.mark.timeout(120)]

# SM_NUM_GPUS: the toolkit counts `nvidia-smi --list-gpus` lines, we ask NVML and honour
# CUDA_VISIBLE_DEVICES (docs/compatibility.md). Both are 0 without a GPU, so the values are
# compared there; on a GPU host they may legitimately differ.
GPU_HOST = shutil.which("nvidia-smi") is not None
IGNORE = ("SM_NUM_GPUS", "SM_TRAINING_ENV.num_gpus") if GPU_HOST else ()


@pytest.mark.parametrize("tree", TREES, ids=[t.name for t in TREES])
def test_user_program_sees_the_same(
    tree: Tree,
    oracle_train: list[str],
    our_train: list[str],
    tmp_path: Path,
    watched: LeakWatch,
) -> None:
    theirs = harness.run(oracle_train, tree, tmp_path)
    assert theirs.returncode == 0 and theirs.dump is not None, theirs.describe()
    ours = harness.run([*our_train, *tree.our_args], tree, tmp_path)
    assert ours.returncode == 0 and ours.dump is not None, ours.describe()

    diffs = harness.differences(theirs.dump, ours.dump, ignore=IGNORE)
    assert not diffs, f"{tree.name}: {len(diffs)} differences\n" + "\n".join(diffs)
    assert ours.code_files == theirs.code_files
    assert "success" in {f.split(" ")[0] for f in ours.output_files}
