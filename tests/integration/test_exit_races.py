"""No lost exit, ever: ranks that end before supervision begins are read like any other.

The race this guards against: every rank exits before the supervisor fixes its list of ranks
to wait for, and a supervisor that asks "who is still running?" waits for nobody and reports
success. It is found by repetition: the in-process loops run the real start and supervision
(`app.execute`, real processes) hundreds of times; the command-line loops run the whole
launcher (`launcher run`, `train`, the `mpi` backend's mpirun) many times each.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import app, plan
from launcher.containment import Containment
from launcher.plan import Backend, HostSlots, JobSpec, World
from tests.helpers.procwatch import LeakWatch
from tests.integration.conftest import REPO, sm_tree

ROUNDS = 300  # in-process rounds (real ranks, the real start and supervision)
CLI_ROUNDS = 200  # whole `launcher run` processes
TRAIN_ROUNDS = 25


def quiet(program: str) -> plan.LaunchPlan:
    job = JobSpec((program,), str(REPO), Backend.TORCH)
    world = World((HostSlots("racehost", 2, "127.0.0.1"),), 0, "127.0.0.1", 29999)
    return plan.build(job, world, dict(os.environ), 2)


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("program", "code"), [("/bin/false", 1), ("/bin/true", 0)])
def test_instant_exits_are_never_lost_in_process(
    program: str, code: int, no_leaks: LeakWatch, capfd: pytest.CaptureFixture[str]
) -> None:
    launch = quiet(program)
    options = app.RunOptions(grace_s=1.0)
    codes = [app.execute(launch, options, Containment()).exit_code for _ in range(ROUNDS)]
    wrong = [(i, c) for i, c in enumerate(codes) if c != code]
    assert not wrong, f"{len(wrong)} of {ROUNDS} rounds gave the wrong exit code: {wrong[:10]}"


def cli(argv: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(
        [sys.executable, "-m", "launcher", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=60,
    ).returncode


@pytest.mark.timeout(240)
@pytest.mark.parametrize(("program", "code"), [("/bin/false", 1), ("/bin/true", 0)])
def test_instant_exits_are_never_lost_by_launcher_run(
    program: str, code: int, no_leaks: LeakWatch
) -> None:
    argv = ["run", "--nproc-per-host", "2", "--no-python", program]
    codes = [cli(argv) for _ in range(CLI_ROUNDS)]
    assert codes == [code] * CLI_ROUNDS


@pytest.mark.timeout(240)
def test_train_never_reports_an_instant_failure_as_success(
    tmp_path: Path, no_leaks: LeakWatch
) -> None:
    for i in range(TRAIN_ROUNDS):
        base = sm_tree(tmp_path / f"job-{i}", "import sys\nsys.exit(7)\n")
        code = subprocess.run(
            [sys.executable, "-m", "launcher", "train"],
            cwd=REPO,
            env={**os.environ, "SAGEMAKER_BASE_DIR": str(base)},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=60,
        ).returncode
        assert code == 7, f"round {i}"
        assert (base / "output" / "failure").exists()
        assert not (base / "output" / "success").exists()


@pytest.mark.timeout(240)
@pytest.mark.skipif(shutil.which("mpirun") is None, reason="needs Open MPI's mpirun")
def test_the_mpi_leader_never_loses_mpiruns_exit(no_leaks: LeakWatch) -> None:
    argv = ["run", "--backend", "mpi", "--nproc-per-host", "2", "--no-python", "/bin/false"]
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    codes = [cli(argv, env) for _ in range(10)]
    assert all(c != 0 for c in codes), codes


# Runs in a process of its own: the orphan reaper is process-wide and would collect the test
# runner's own children. Ranks leave orphans that exit at once (a subshell's background job),
# so the reaper collects adopted orphans while new ranks are being started and reaped by their
# own waiters: the registry must keep the two apart in every round.
REAPER_RACE = """
import os, sys
from launcher import app, plan
from launcher.plan import Backend, HostSlots, JobSpec, World
script = "(/bin/true &) ; (/bin/true &) ; exit $1"
codes = []
with app.guarded(dry_run=False, environ=os.environ, grace_s=1.0) as scope:
    for want in [int(a) for a in sys.argv[1:]]:
        job = JobSpec(("/bin/sh", "-c", script, "sh", str(want)), ".", Backend.TORCH)
        world = World((HostSlots("racehost", 2, "127.0.0.1"),), 0, "127.0.0.1", 29999)
        launch = plan.build(job, world, dict(os.environ), 2)
        codes.append(app.execute(launch, app.RunOptions(grace_s=1.0), scope).exit_code)
print(" ".join(map(str, codes)))
"""


@pytest.mark.timeout(240)
def test_the_orphan_reaper_never_takes_a_ranks_exit(no_leaks: LeakWatch) -> None:
    wants = [3, 0] * (ROUNDS // 2)
    done = subprocess.run(
        [sys.executable, "-c", REAPER_RACE, *map(str, wants)],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=200,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    codes = [int(c) for c in done.stdout.split()]
    wrong = [(i, c, w) for i, (c, w) in enumerate(zip(codes, wants, strict=True)) if c != w]
    assert not wrong, f"{len(wrong)} of {len(wants)} rounds wrong (round, got, want): {wrong[:10]}"
