"""`train --preflight` on one host, as real processes on a real tree: the probe child really
runs (torch on CPU), the directories are really written. (`launcher preflight` runs in
tests/multihost/test_preflight.py.)

A host that passes runs the user's code after the table; a host whose checkpoint directory
cannot be written exits 78 before any user code, with output/failure naming it and
preflight.json listing every check; a bad level is one line naming its source, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import PYTHON, Launch, sm_tree

pytestmark = pytest.mark.timeout(90)

TRAIN = (PYTHON, "-m", "launcher", "train")
SCRIPT = "print('user code ran')\n"


def test_train_with_a_passing_preflight_runs_the_user_code(launch: Launch, tmp_path: Path) -> None:
    base = sm_tree(tmp_path / "sm", SCRIPT)
    job = launch(command=[*TRAIN, "--preflight", "quick"], env={"SAGEMAKER_BASE_DIR": str(base)})
    assert job.wait() == 0, job.err
    assert job.out_bytes == b"user code ran\n"
    assert "preflight passed" in job.err
    table = job.err[job.err.index("CHECK") :]
    assert table.split()[:7] == ["CHECK", "HOST", "GPU", "VALUE", "UNIT", "THRESHOLD", "VERDICT"]
    report = json.loads((base / "output" / "preflight.json").read_text())
    assert report["passed"] is True and report["level"] == "quick"
    checks = {r["check"] for r in report["rows"]}
    assert {"dir.writable", "dir.free", "cpu.matmul", "cpu.membw"} <= checks
    assert all(r["verdict"] != "FAIL" for r in report["rows"])


def test_an_unwritable_checkpoint_dir_stops_the_job_with_78_before_user_code(
    launch: Launch, tmp_path: Path
) -> None:
    base = sm_tree(tmp_path / "sm", SCRIPT)
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the checkpoint folder should be")
    env = {
        "SAGEMAKER_BASE_DIR": str(base),
        "LAUNCHER_PREFLIGHT": "quick",
        "LAUNCHER_CHECKPOINT_DIR": str(blocked),
    }
    job = launch(command=[*TRAIN], env=env)
    assert job.wait() == 78, job.err
    assert b"user code ran" not in job.out_bytes
    failure = (base / "output" / "failure").read_text()
    assert failure.splitlines()[0] == "preflight failed on 1 host(s): algo-1"
    assert f"preflight FAIL algo-1 checkpoints {blocked}: dir.writable no" in failure
    assert "Traceback" not in job.err
    report = json.loads((base / "output" / "preflight.json").read_text())
    assert report["passed"] is False and report["bad_hosts"] == ["algo-1"]


def test_a_bad_level_is_one_line_naming_its_source(launch: Launch, tmp_path: Path) -> None:
    base = sm_tree(tmp_path / "sm", SCRIPT)
    env = {"SAGEMAKER_BASE_DIR": str(base), "LAUNCHER_PREFLIGHT": "thorough"}
    job = launch(command=[*TRAIN], env=env)
    assert job.wait() == 2, job.err
    (line,) = [x for x in job.err.splitlines() if x.strip()]
    assert "environment: LAUNCHER_PREFLIGHT: 'thorough' is invalid" in line
    assert "must be one of off, quick, full" in line


def test_launcher_run_with_a_failing_preflight_exits_78_before_the_program(
    launch: Launch, tmp_path: Path
) -> None:
    program = tmp_path / "prog.py"
    program.write_text(SCRIPT)
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file")
    out = tmp_path / "out"
    job = launch(
        command=[
            PYTHON,
            "-m",
            "launcher",
            "run",
            "--preflight",
            "quick",
            "--output-dir",
            str(out),
            str(program),
        ],
        env={"LAUNCHER_CHECKPOINT_DIR": str(blocked)},
    )
    assert job.wait() == 78, job.err
    assert b"user code ran" not in job.out_bytes
    failure = (out / "failure").read_text()
    assert f"dir.writable no (needs writable): cannot write in {blocked}" in failure
    assert json.loads((out / "preflight.json").read_text())["passed"] is False
