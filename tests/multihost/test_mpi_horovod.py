"""The `mpi` and `horovod` backends across simulated hosts, with real OpenMPI, sshd and Horovod.

Every host of a cluster (network namespaces, see cluster.py) gets its own SageMaker tree and runs
`train`, as on SageMaker. The checks: an mpi4py gather with each rank's own SM_* values and the
torch variables; a Horovod DistributedOptimizer run under both backends (uneven slots under
gloo); a rank failure under each backend failing every host with the same code and root cause;
a follower whose sshd never comes up (exit 3 naming it). After every job: every `train` exited,
nothing is left running in any host namespace (sshd, orted and ranks included), and root's
known_hosts is untouched.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.trees import cluster_resources, encode_hps, write_trees
from tests.helpers.waiting import poll_until, wait_for
from tests.multihost.cluster import Cluster, netns_key, pids_in_netns
from tests.multihost.conftest import ClusterFactory

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / "tests" / "bin"
PY = sys.executable
KNOWN_HOSTS = Path.home() / ".ssh" / "known_hosts"

pytestmark = [pytest.mark.multihost, pytest.mark.slow]


def _has(module: str) -> bool:
    probe = subprocess.run([PY, "-c", f"import {module}"], capture_output=True, check=False)
    return probe.returncode == 0


needs_mpi = pytest.mark.skipif(
    not shutil.which("mpirun") or not _has("mpi4py"), reason="needs OpenMPI and mpi4py"
)
needs_horovod = pytest.mark.skipif(
    not _has("horovod.torch"), reason="needs Horovod (scripts/install-horovod.sh)"
)


@dataclass
class Job:
    """One `train` per host; `outputs[host]` is what that host's launcher printed."""

    cluster: Cluster
    trees: dict[str, Path]
    procs: dict[str, subprocess.Popen[bytes]]
    outputs: dict[str, str]
    codes: dict[str, int]
    known_hosts: int | None = None  # root's known_hosts mtime before the job (None: absent)
    started: float = 0.0
    wall_s: float = 0.0

    def failure(self, host: str) -> str:
        path = self.trees[host] / "output" / "failure"
        return path.read_text() if path.exists() else ""

    def succeeded(self, host: str) -> bool:
        return (self.trees[host] / "output" / "success").exists()


def make_trees(
    root: Path, cluster: Cluster, program: str, hps: Mapping[str, Any]
) -> dict[str, Path]:
    """One SageMaker tree per host at `root/<host>`, tests/bin/`program` copied into each code/.

    No instance_groups: every host is a distribution host even without a distribution flag
    (the horovod backend is chosen by LAUNCHER_BACKEND alone).
    """
    hosts = [h.name for h in cluster.hosts]
    resources = cluster_resources(hosts, instance_groups=False)
    return write_trees(
        root, hosts, encode_hps(hps), BIN / program, entry=program, resources=resources
    )


def start_job(
    cluster: Cluster,
    trees: dict[str, Path],
    *,
    env: Mapping[str, str] | None = None,
    env_per_host: Mapping[str, Mapping[str, str]] | None = None,
) -> Job:
    """Start `train` on every host (leader last: the followers wait for it)."""
    base_env = {
        "LAUNCHER_JOB_TOKEN": "test-token-" + cluster.plan.prefix,
        "LAUNCHER_PEER_TIMEOUT": "30",
        "LAUNCHER_GRACE_PERIOD": "5",
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    known = KNOWN_HOSTS.stat().st_mtime_ns if KNOWN_HOSTS.exists() else None
    procs = {}
    for host in reversed(cluster.hosts):
        host_env = {**base_env, "SAGEMAKER_BASE_DIR": str(trees[host.name])}
        host_env.update((env_per_host or {}).get(host.name, {}))
        procs[host.name] = cluster.popen(
            host,
            [PY, "-m", "launcher", "train"],
            env=host_env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
    return Job(cluster, trees, procs, {}, {}, known_hosts=known, started=time.monotonic())


def finish_job(job: Job, timeout: float = 60.0) -> Job:
    """Wait for every `train`; then nothing may be left running and known_hosts untouched."""
    for name, proc in job.procs.items():
        left = max(1.0, job.started + timeout - time.monotonic())
        out, _ = proc.communicate(timeout=left)
        job.outputs[name], job.codes[name] = out.decode(errors="replace"), proc.returncode
    job.wall_s = time.monotonic() - job.started
    assert_nothing_left(job.cluster, job)
    for folder in private_folders(job):
        # Keys and per-host environments are removed, unless that launcher was SIGKILLed.
        if job.codes[folder[0]] == -signal.SIGKILL:
            shutil.rmtree(folder[1], ignore_errors=True)
        assert not folder[1].exists(), f"{folder[1]} was left behind"
    after = KNOWN_HOSTS.stat().st_mtime_ns if KNOWN_HOSTS.exists() else None
    assert after == job.known_hosts, f"{KNOWN_HOSTS} was written"
    return job


def run_job(
    cluster: Cluster,
    trees: dict[str, Path],
    *,
    env: Mapping[str, str] | None = None,
    env_per_host: Mapping[str, Mapping[str, str]] | None = None,
    timeout: float = 60.0,
) -> Job:
    """Run `train` on every host to the end (see `start_job` and `finish_job`)."""
    job = start_job(cluster, trees, env=env, env_per_host=env_per_host)
    return finish_job(job, timeout)


def private_folders(job: Job) -> list[tuple[str, Path]]:
    """(host, folder) for each per-job ssh folder a launcher named in its output."""
    return [
        (host, Path(m.group(0)))
        for host, out in job.outputs.items()
        for m in re.finditer(r"/\S*/launcher-mpi-[\w]+", out)
    ]


def left_in(cluster: Cluster) -> dict[str, set[int]]:
    """The processes still running in each host namespace, by host (hosts with none left out)."""
    keys = {h.name: netns_key(h.netns) for h in cluster.hosts}
    left = {h: pids_in_netns({k}) for h, k in keys.items() if k is not None}
    return {h: pids for h, pids in left.items() if pids}


def assert_nothing_left(cluster: Cluster, job: Job, deadline_s: float = 5.0) -> None:
    """No process may be left in any host namespace once every `train` has exited (sshd, its
    sessions, orted and ranks included): poll briefly, since a killed sshd may take a moment."""
    if poll_until(lambda: not left_in(cluster), deadline_s, poll_s=0.05):
        return
    names = {
        h: [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120] for p in ps]
        for h, ps in left_in(cluster).items()
    }
    raise AssertionError(f"processes left after the job: {names}\n{job.outputs}")


def ranks_running(job: Job, out: Path) -> None:
    """Wait until rank 0 wrote the gather (every rank is then running) while every `train`
    runs."""

    def exited() -> str | None:
        codes = {h: p.poll() for h, p in job.procs.items()}
        return f"train exited early {codes}" if any(c is not None for c in codes.values()) else None

    wait_for(out.exists, 60, "every rank to run", stop_if=exited)


def show(job: Job) -> str:
    return "\n".join(f"--- {h} (exit {job.codes[h]}) ---\n{out}" for h, out in job.outputs.items())


# --- mpi ----------------------------------------------------------------------------------------


@needs_mpi
@pytest.mark.timeout(90)
def test_mpi_gather_gives_each_rank_its_own_host_values(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    out = tmp_path / "gather.json"
    hps = {
        "sagemaker_mpi_enabled": True,
        "sagemaker_mpi_num_of_processes_per_host": 1,
        # shlex-quoted, and replacing a default rather than appended behind it (issue #70).
        "sagemaker_mpi_custom_mpi_options": "-x MPI_TEST_VALUE='two words' -x NCCL_DEBUG=INFO",
        "out": str(out),
        "epochs": 2,
    }
    trees = make_trees(tmp_path / "trees", cluster, "mpi_gather.py", hps)
    only_here = {h.name: {"MPI_TEST_HOST_ONLY": f"set-on-{h.name}"} for h in cluster.hosts}
    job = run_job(cluster, trees, env_per_host=only_here)
    assert set(job.codes.values()) == {0}, show(job)
    assert all(job.succeeded(h.name) for h in cluster.hosts)
    ranks = json.loads(out.read_text())
    leader = cluster.host(1)
    assert [r["mpi_rank"] for r in ranks] == [0, 1, 2]
    for r, host in zip(ranks, cluster.hosts, strict=True):
        env = r["env"]
        assert r["hostname"] == host.name  # -map-by slot: rank i on host i
        # Its own host's values (toolkit issue #158), including what only that host's
        # launcher had in its environment.
        assert env["SM_CURRENT_HOST"] == host.name
        assert env["LAUNCHER_HOST"] == host.name
        assert env["MPI_TEST_HOST_ONLY"] == f"set-on-{host.name}"
        assert json.loads(env["SM_HOSTS"]) == ["algo-1", "algo-2", "algo-3"]
        assert env["SM_NUM_GPUS"] == "0"
        assert env["PYTHONPATH"].split(":")[0] == str(trees[host.name] / "code")
        # The torch contract from OMPI_COMM_WORLD_*, so DDP scripts run unchanged.
        assert (env["RANK"], env["LOCAL_RANK"], env["WORLD_SIZE"]) == (str(r["mpi_rank"]), "0", "3")
        assert (env["GROUP_RANK"], env["GROUP_WORLD_SIZE"]) == (str(r["mpi_rank"]), "3")
        assert env["MASTER_ADDR"] == leader.address
        assert env["MASTER_PORT"] == ranks[0]["env"]["MASTER_PORT"] != ""
        assert env["LAUNCHER_BACKEND"] == "mpi"
        # Job-wide choices forwarded by mpirun keep mpirun's value.
        assert env["MPI_TEST_VALUE"] == "two words"
        assert env["NCCL_DEBUG"] == "INFO"
        assert env["NCCL_SOCKET_IFNAME"] == "eth0"
        assert r["argv"] == ["--epochs", "2", "--out", str(out)]


@needs_mpi
@pytest.mark.timeout(60)
def test_mpi_on_one_host_needs_no_sshd(cluster_factory: ClusterFactory, tmp_path: Path) -> None:
    cluster = cluster_factory(1)
    out = tmp_path / "gather.json"
    hps = {"sagemaker_mpi_enabled": True, "sagemaker_mpi_num_of_processes_per_host": 2}
    trees = make_trees(tmp_path / "trees", cluster, "mpi_gather.py", {**hps, "out": str(out)})
    job = run_job(cluster, trees)
    assert job.codes == {"algo-1": 0}, show(job)
    assert "sshd" not in job.outputs["algo-1"] and "plm_rsh_agent" not in job.outputs["algo-1"]
    ranks = json.loads(out.read_text())
    assert [(r["env"]["RANK"], r["env"]["LOCAL_RANK"]) for r in ranks] == [("0", "0"), ("1", "1")]
    assert {r["env"]["SM_CURRENT_HOST"] for r in ranks} == {"algo-1"}
    assert {r["env"]["LOCAL_WORLD_SIZE"] for r in ranks} == {"2"}


@needs_mpi
@pytest.mark.timeout(90)
def test_mpi_rank_failure_fails_every_host_with_its_root_cause(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    hps = {
        "sagemaker_mpi_enabled": True,
        "out": str(tmp_path / "gather.json"),
        "fail-rank": 1,
        "code": 7,
    }
    trees = make_trees(tmp_path / "trees", cluster, "mpi_gather.py", hps)
    job = run_job(cluster, trees)
    assert job.codes == {"algo-2": 7, "algo-1": 7}, show(job)
    for host in ("algo-1", "algo-2"):
        assert not job.succeeded(host)
        first = job.failure(host).splitlines()[0]
        # mpi4py turns the rank's sys.exit(7) into MPI_Abort(7); mpirun names the rank.
        assert (
            first == "rank 1 on algo-2 called MPI_Abort with error code 7: rank 1 fails on purpose"
        ), show(job)


@needs_mpi
@pytest.mark.timeout(60)
def test_mpi_host_whose_sshd_never_comes_up_fails_the_job_with_exit_3(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    hps = {"sagemaker_mpi_enabled": True, "out": str(tmp_path / "gather.json")}
    trees = make_trees(tmp_path / "trees", cluster, "mpi_gather.py", hps)
    broken = {"algo-3": {"LAUNCHER_SSHD": str(BIN / "mpi_sshd_never_up.py")}}
    job = run_job(cluster, trees, env={"LAUNCHER_PEER_TIMEOUT": "3"}, env_per_host=broken)
    assert set(job.codes.values()) == {3}, show(job)
    for host in ("algo-1", "algo-2", "algo-3"):
        text = job.failure(host)
        assert "sshd on algo-3" in text and "algo-2" not in text.splitlines()[0], show(job)
    assert not (tmp_path / "gather.json").exists()  # mpirun never ran


@needs_mpi
@pytest.mark.timeout(90)
def test_mpi_sigterm_to_a_follower_stops_the_job_on_every_host(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    out = tmp_path / "gather.json"
    hps = {"sagemaker_mpi_enabled": True, "out": str(out), "sleep": 60}
    trees = make_trees(tmp_path / "trees", cluster, "mpi_gather.py", hps)
    job = start_job(cluster, trees)
    ranks_running(job, out)
    began = time.monotonic()
    job.procs["algo-2"].send_signal(signal.SIGTERM)  # the follower's `train` itself
    finish_job(job, timeout=30)
    assert time.monotonic() - began < 15  # not the 60 s the ranks would sleep
    assert job.codes == {"algo-2": 143, "algo-1": 143}, show(job)
    for host in ("algo-1", "algo-2"):
        assert job.failure(host).startswith("the job was stopped by SIGTERM on algo-2"), show(job)


@needs_mpi
@pytest.mark.timeout(90)
def test_mpi_leader_killed_leaves_nothing_running(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    out = tmp_path / "gather.json"
    hps = {"sagemaker_mpi_enabled": True, "out": str(out), "sleep": 60}
    trees = make_trees(tmp_path / "trees", cluster, "mpi_gather.py", hps)
    job = start_job(cluster, trees, env={"LAUNCHER_HEARTBEAT_TIMEOUT": "2"})
    ranks_running(job, out)
    job.procs["algo-1"].send_signal(signal.SIGKILL)  # no teardown of its own at all
    # The watchdog stops mpirun and the ssh masters, Open MPI's lifeline ends orted and the
    # ranks, the follower sees its leader gone and stops sshd: finish_job checks that nothing
    # is left in either namespace.
    began = time.monotonic()
    finish_job(job, timeout=30)
    assert time.monotonic() - began < 15  # not the 60 s the ranks would sleep
    assert job.codes["algo-1"] == -signal.SIGKILL
    assert job.codes["algo-2"] == 1, show(job)
    assert "lost the leader algo-1" in job.failure("algo-2"), show(job)


# --- horovod ------------------------------------------------------------------------------------


@needs_horovod
@pytest.mark.timeout(120)
def test_horovod_gloo_training_with_uneven_slots(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    out = tmp_path / "hvd.json"
    trees = make_trees(tmp_path / "trees", cluster, "hvd_train.py", {"out": str(out)})
    slots = {"algo-1": {"LAUNCHER_PROCS_PER_HOST": "2"}, "algo-2": {"LAUNCHER_PROCS_PER_HOST": "1"}}
    job = run_job(
        cluster, trees, env={"LAUNCHER_BACKEND": "horovod"}, env_per_host=slots, timeout=100
    )
    assert set(job.codes.values()) == {0}, show(job)
    result = json.loads(out.read_text())
    assert result["controller"] == "gloo"
    assert result["size"] == 3
    assert result["weights_agree"]
    assert result["losses"][-1] < result["losses"][0]
    # Horovod's own view: (rank, local rank, local size, cross rank, cross size, host, SM host).
    # Uneven slots: the second slot of algo-1 has no peer at local rank 1 (cross size 1).
    assert [r[:5] for r in result["ranks"]] == [[0, 0, 2, 0, 2], [1, 1, 2, 0, 1], [2, 0, 1, 1, 2]]
    assert [r[5] for r in result["ranks"]] == ["algo-1", "algo-1", "algo-2"]
    assert [r[6] for r in result["ranks"]] == ["algo-1", "algo-1", "algo-2"]


@needs_horovod
@needs_mpi
@pytest.mark.timeout(120)
def test_horovod_training_under_the_mpi_backend(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    out = tmp_path / "hvd.json"
    hps = {"sagemaker_mpi_enabled": True, "out": str(out)}
    trees = make_trees(tmp_path / "trees", cluster, "hvd_train.py", hps)
    job = run_job(cluster, trees, timeout=100)
    assert set(job.codes.values()) == {0}, show(job)
    result = json.loads(out.read_text())
    assert result["controller"] == "mpi"
    assert result["size"] == 2 and result["weights_agree"]
    assert [r[6] for r in result["ranks"]] == ["algo-1", "algo-2"]


@needs_horovod
@pytest.mark.timeout(120)
def test_horovod_rank_failure_fails_every_host(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(2)
    hps = {"out": str(tmp_path / "hvd.json"), "fail-rank": 1}
    trees = make_trees(tmp_path / "trees", cluster, "hvd_train.py", hps)
    job = run_job(cluster, trees, env={"LAUNCHER_BACKEND": "horovod"}, timeout=100)
    assert set(job.codes.values()) == {3}, show(job)
    first = job.failure("algo-1").splitlines()[0]
    assert first == "rank 1 on algo-2 exited with code 3: RuntimeError: rank 1 fails on purpose"
    assert job.failure("algo-2") and not job.succeeded("algo-2")
    assert not (tmp_path / "hvd.json").exists()
