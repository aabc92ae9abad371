"""`docker run IMAGE train` on one host, on a mounted SageMaker tree: success, a failing rank,
and `docker stop` (SIGTERM to `train`, forwarded to the rank, 128+15 within the grace period).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.helpers.trees import write_tree
from tests.helpers.waiting import wait_for
from tests.images.engine import CPU_IMAGE, Scope

OK = """\
import os, torch
import collectives
open(os.path.join(os.environ["SM_MODEL_DIR"], "weights.txt"), "w").write(torch.__version__)
print("trained on", os.uname().nodename, flush=True)
"""

FAIL = """\
import sys
print("about to fail", flush=True)
sys.exit(7)
"""

# Writes `ready` once its SIGTERM handler is in place, then waits; on SIGTERM it notes the
# signal and exits as a default SIGTERM would (the launcher reports 128+15 either way).
STOPPABLE = """\
import os, signal, time
out = os.environ["SM_OUTPUT_DATA_DIR"]
def on_term(signum, frame):
    open(os.path.join(out, "got-sigterm"), "w").write(str(os.getpid()))
    raise SystemExit(128 + signum)
signal.signal(signal.SIGTERM, on_term)
open(os.path.join(out, "ready"), "w").write("")
while True:
    time.sleep(60)
"""


def one_host_tree(root: Path, program: str) -> Path:
    return write_tree(root / "algo-1", "algo-1", ["algo-1"], {}, program)


def run_train(scope: Scope, tree: Path, timeout: float = 90) -> tuple[int, str]:
    name = scope.name("train")
    result = scope.engine.run(
        "run", "--rm", "--name", name, "--label", scope.label, "--hostname=algo-1",
        f"--volume={tree}:/opt/ml", CPU_IMAGE, "train", timeout=timeout, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_train_succeeds_and_writes_the_model(scope: Scope, tmp_path: Path) -> None:
    tree = one_host_tree(tmp_path, OK)
    code, log = run_train(scope, tree)
    assert code == 0, log
    assert (tree / "output" / "success").exists()
    assert not (tree / "output" / "failure").exists()
    assert (tree / "model" / "weights.txt").read_text().endswith("+cpu")
    assert "trained on algo-1" in log


@pytest.mark.timeout(120)
def test_a_failing_rank_gives_its_exit_code_and_output_failure(
    scope: Scope, tmp_path: Path
) -> None:
    tree = one_host_tree(tmp_path, FAIL)
    code, log = run_train(scope, tree)
    assert code == 7, log
    failure = (tree / "output" / "failure").read_text()
    assert failure.startswith("rank 0 on algo-1 exited with code 7"), failure
    assert not (tree / "output" / "success").exists()


@pytest.mark.timeout(120)
def test_stop_forwards_sigterm_and_exits_143_within_the_grace(scope: Scope, tmp_path: Path) -> None:
    grace = 30
    tree = one_host_tree(tmp_path, STOPPABLE)
    data = tree / "output" / "data"
    name = scope.start(
        CPU_IMAGE, ["train"], "--hostname=algo-1", f"--volume={tree}:/opt/ml",
        name=scope.name("stop"),
    )  # fmt: skip
    wait_for(
        (data / "ready").exists, 60, "the rank to install its SIGTERM handler",
        describe=lambda: scope.engine.logs(name),
    )  # fmt: skip
    start = time.monotonic()
    # `stop` sends the image's stop signal (SIGTERM) and SIGKILLs after `grace` seconds.
    scope.engine.run("stop", "-t", str(grace), name, timeout=grace + 30)
    elapsed = time.monotonic() - start
    log = scope.engine.logs(name)
    assert scope.engine.exit_code(name) == 143, log
    assert elapsed < grace / 2, f"stop took {elapsed:.1f} s of a {grace} s grace"
    assert (data / "got-sigterm").exists(), "SIGTERM did not reach the rank"
    assert "SIGTERM" in (tree / "output" / "failure").read_text()
    # Exited: the container's PID 1 (`train`) is gone, so the kernel has ended every process
    # of its PID namespace; nothing of the job outlives the stop.
    state = scope.engine.run("inspect", "--format", "{{.State.Status}}", name).stdout
    assert state.strip() == "exited"
