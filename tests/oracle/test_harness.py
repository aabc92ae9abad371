"""The comparison itself can fail, and the oracle is the toolkit the contract describes.

A comparison that never reports anything proves nothing: `differences` is fed dumps with one
change at a time. Then the toolkit's own output for the §6 worked example is checked against
the literal argv and SM_HP_* values of sagemaker-contract.md, so that the oracle in the venv
is the behaviour the project documents.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.procwatch import LeakWatch
from tests.oracle import harness
from tests.oracle.trees import TREES, WORKED_ARGV, WORKED_SM_HP

DUMP: dict[str, Any] = {
    "argv": ["train.py", "--epochs", "3"],
    "orig_argv": ["/x/python", "--", "train.py", "--epochs", "3"],
    "cwd": "/opt/ml/code",
    "env": {
        "SM_HP_EPOCHS": "3",
        "SM_TRAINING_ENV": json.dumps({"a": 1, "hosts": ["algo-1"]}, separators=(",", ":")),
        "PYTHONPATH": "/opt/ml/code:/x/lib",
        "CURRENT_HOST": "algo-1",
        "SAGEMAKER_JOB_NAME": "",
        "SAGEMAKER_REGION": "",
        "OTHER": "not compared",
    },
}


def changed(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    dump = copy.deepcopy(DUMP)
    target = dump
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return dump


@pytest.mark.parametrize(
    ("path", "value", "expect"),
    [
        (("env", "SM_HP_EPOCHS"), "4", "SM_HP_EPOCHS: toolkit '3' != ours '4'"),
        (("env", "SM_HP_EPOCHS"), None, "SM_HP_EPOCHS: missing in ours"),
        (("env", "SM_HP_EXTRA"), "1", "SM_HP_EXTRA: only in ours"),
        (("env", "SM_TRAINING_ENV"), '{"a":2,"hosts":["algo-1"]}', "SM_TRAINING_ENV.a"),
        (("env", "SM_TRAINING_ENV"), '{"a": 1, "hosts": ["algo-1"]}', "different text encoding"),
        (("env", "CURRENT_HOST"), "algo-2", "CURRENT_HOST"),
        (("env", "SAGEMAKER_REGION"), None, "SAGEMAKER_REGION"),
        (("env", "PYTHONPATH"), "/x/lib:/opt/ml/code", "PYTHONPATH[0]"),
        (("argv",), ["train.py", "--epochs", "4"], "argv"),
        (("orig_argv",), ["/y/python", "train.py", "--epochs", "3"], "interpreter argv"),
        (("cwd",), "/opt/ml", "cwd"),
    ],
)
def test_differences_are_reported(path: tuple[str, ...], value: Any, expect: str) -> None:
    diffs = harness.differences(DUMP, changed(path, value))
    assert len(diffs) == 1 and expect in diffs[0], diffs


def test_equal_dumps_and_ignored_names() -> None:
    assert harness.differences(DUMP, copy.deepcopy(DUMP)) == []
    other = changed(("env", "OTHER"), "differs")  # not SM_* and not listed: not compared
    assert harness.differences(DUMP, other) == []
    assert (
        harness.differences(DUMP, changed(("env", "SM_HP_EPOCHS"), "4"), ignore=("SM_HP_EPOCHS",))
        == []
    )


def test_enough_trees() -> None:
    assert len(TREES) >= 12
    assert len({t.name for t in TREES}) == len(TREES)


@pytest.mark.oracle
@pytest.mark.timeout(120)
def test_the_oracle_gives_the_contracts_worked_example(
    oracle_train: list[str], tmp_path: Path, watched: LeakWatch
) -> None:
    tree = next(t for t in TREES if t.name == "worked-example-6")
    run = harness.run(oracle_train, tree, tmp_path)
    assert run.dump is not None, run.describe()
    assert run.dump["argv"][1:] == WORKED_ARGV
    hp_vars = {k: v for k, v in run.dump["env"].items() if k.startswith("SM_HP_")}
    assert hp_vars == WORKED_SM_HP
    assert run.dump["orig_argv"][1:3] == ["--", "train.py"]  # 5.1.4's `python -- name`
