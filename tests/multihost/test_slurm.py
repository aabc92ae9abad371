"""`launcher run --hosts-from slurm` under a real Slurm: slurmctld and munge on one namespace
host, slurmd on three more, each with its own hostname (tests/multihost/slurm.py).

The daemons start once for the module (about 2 s); each test submits real jobs with `sbatch`
or `srun` from the controller and checks what the ranks saw and how the launchers ended.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch
from tests.multihost.cluster import Cluster, ClusterError
from tests.multihost.slurm import SlurmCluster, missing_programs

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = str(Path(sys.executable).with_name("launcher"))
SBATCH = str(REPO / "examples" / "slurm" / "train.sbatch")
DEMO = str(REPO / "examples" / "train_regression.py")
BIN = REPO / "tests" / "bin"
NAMES = ("slurmctl", "node1", "node2", "node3")
pytestmark = [pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def slurm(netns_support: str | None) -> Iterator[SlurmCluster]:
    if netns_support is not None:
        pytest.skip(netns_support)
    if missing := missing_programs():
        pytest.skip(f"Slurm tests need {', '.join(missing)} (apt-get install slurm-wlm munge)")
    cluster = Cluster.create(len(NAMES), NAMES)
    try:
        yield SlurmCluster.start(cluster)
    finally:
        try:
            cluster.close()
        except ClusterError as e:
            pytest.fail(f"Slurm cluster teardown: {e}", pytrace=False)


def tuples(text: str) -> list[dict[str, object]]:
    return sorted(
        (json.loads(m) for m in re.findall(r"TUPLE (\{.*\})", text)),
        key=lambda t: int(str(t["rank"])),
    )


def test_demo_training_through_sbatch(
    slurm: SlurmCluster, tmp_path: Path, no_leaks: LeakWatch
) -> None:
    """The example sbatch script, unchanged: three nodes train the demo and rank 0 saves."""
    base = tmp_path / "ml"
    out = tmp_path / "job.out"
    argv = ["sbatch", "--wait", "--nodes=3", f"--output={out}", SBATCH, DEMO]
    argv += ["--epochs", "2", "--max-steps", "4", "--samples", "512"]
    env = {"LAUNCHER": LAUNCHER, "SAGEMAKER_BASE_DIR": str(base), "HOME": str(tmp_path)}
    done = slurm.run(argv, timeout=150, env=env)
    log = out.read_text(errors="replace") if out.exists() else ""
    assert done.returncode == 0, done.stderr + log + slurm.logs()
    assert "training on 3 rank(s)" in log
    assert "platform slurm: 3 host(s), one launcher per host" in log
    assert "NOT authenticated" not in log  # the script made a secret file
    assert (base / "model" / "model.pt").is_file()
    assert not list((tmp_path / ".ml-launcher").iterdir())  # and removed it


def test_rank_failure_stops_every_node_with_the_root_cause(
    slurm: SlurmCluster, tmp_path: Path, no_leaks: LeakWatch
) -> None:
    program = [LAUNCHER, "run", "--hosts-from", "slurm", "--nproc-per-host", "2"]
    program += ["--grace-period", "2", str(BIN / "exit_code.py"), "7", "--rank", "3"]
    srun = ["srun", "--nodes=3", "--ntasks-per-node=1", f"--output={tmp_path}/%N.out"]
    done = slurm.run([*srun, *program], timeout=120, env={"LAUNCHER_JOB_TOKEN": "t0ken"})
    assert done.returncode != 0
    for node in ("node1", "node2", "node3"):
        text = (tmp_path / f"{node}.out").read_text(errors="replace")
        # Every node's launcher names the same root cause: rank 3 on node2, exit 7.
        assert re.search(r"job failed \(exit 7\): rank 3 .*node2", text), f"{node}:\n{text}"


def test_batch_script_on_several_nodes_outside_srun_is_refused(
    slurm: SlurmCluster, tmp_path: Path, no_leaks: LeakWatch
) -> None:
    script = tmp_path / "direct.sh"
    script.write_text(f'#!/bin/sh\nexec "{LAUNCHER}" run --hosts-from slurm /bin/true\n')
    script.chmod(0o755)
    out = tmp_path / "direct.out"
    done = slurm.run(["sbatch", "--wait", "--nodes=2", f"--output={out}", str(script)], timeout=60)
    text = out.read_text(errors="replace")
    assert done.returncode != 0
    assert "slurm environment: SLURM_STEP_NUM_NODES: is not set" in text, text
    assert "srun --ntasks-per-node=1" in text
    assert "Traceback" not in text


def test_both_modes_give_the_same_ranks(
    slurm: SlurmCluster, tmp_path: Path, no_leaks: LeakWatch
) -> None:
    """2 nodes x 2 ranks: one launcher per node, and one task per rank (the shim)."""
    rank = [str(BIN / "rank_tuple.py")]
    env = {"LAUNCHER_JOB_TOKEN": "t0ken"}
    # Named nodes: a node still completing the previous test's job must not change the hosts.
    srun = ["srun", "--nodes=2", "--nodelist=node1,node2"]
    per_node = slurm.run(
        [*srun, "--ntasks-per-node=1", LAUNCHER, "run", "--nproc-per-host", "2", *rank],
        timeout=90,
        env=env,
    )
    per_task = slurm.run(
        [*srun, "--ntasks-per-node=2", LAUNCHER, "run", *rank], timeout=90, env=env
    )
    assert per_node.returncode == 0, per_node.stderr
    assert per_task.returncode == 0, per_task.stderr
    assert "one task per GPU (rank shim)" in per_task.stderr
    addresses = {h.address: h.name for h in slurm.cluster.hosts}
    seen = []
    for done in (per_node, per_task):
        found = tuples(done.stdout)
        for t in found:
            t["master"] = addresses.get(str(t["master"]), t["master"])
        seen.append(found)
    assert len(seen[0]) == 4
    assert seen[0] == seen[1]
    assert [(t["rank"], t["local_rank"], t["node_rank"]) for t in seen[0]] == [
        (0, 0, 0), (1, 1, 0), (2, 0, 1), (3, 1, 1)
    ]  # fmt: skip
    assert {t["master"] for t in seen[0]} == {"node1"}
    assert all(t["sm_hosts"] == ["node1", "node2"] for t in seen[0])


def test_a_failed_rank_in_one_task_per_gpu_mode_ends_the_step(
    slurm: SlurmCluster, tmp_path: Path, no_leaks: LeakWatch
) -> None:
    """The shim reports its rank's failure with the root cause and exits with its code; Slurm
    (--kill-on-bad-exit) stops the other tasks, whose shims stop their ranks."""
    srun = ["srun", "--nodes=2", "--nodelist=node1,node2", "--ntasks-per-node=2"]
    srun += ["--kill-on-bad-exit=1", f"--output={tmp_path}/task-%t.out"]
    program = [LAUNCHER, "run", "--grace-period", "2", str(BIN / "exit_code.py"), "7"]
    done = slurm.run([*srun, *program, "--rank", "3"], timeout=120)
    # srun exits with the highest task code: 143 of the tasks Slurm stopped (128 + SIGTERM,
    # forwarded to their ranks); the failed task's own code is in its line.
    assert done.returncode == 143, done.stderr
    assert "task 3: Exited with exit code 7" in done.stderr
    text = (tmp_path / "task-3.out").read_text(errors="replace")
    assert "one task per GPU (rank shim)" in text
    assert re.search(r"job failed \(exit 7\): rank 3 ", text), text
    for task in (0, 1, 2):  # stopped by Slurm; their ranks did not outlive them (no_leaks)
        assert "job succeeded" not in (tmp_path / f"task-{task}.out").read_text()
