"""One launcher per pod under Kubernetes' contracts, emulated in network namespaces, and the
same 2-host x 2-rank job under every platform giving the same ranks.

Kubernetes cannot run here: each "pod" is a namespace host running `launcher run` with exactly
the environment the platform gives a pod (PyTorchJob's PET_* and MASTER_ADDR/RANK/WORLD_SIZE,
an Indexed Job's JOB_COMPLETION_INDEX, JobSet's labels through the downward API), and its
stable DNS names are aliases in the hosts' /etc/hosts (what the headless Service provides).
SageMaker is the real `train` with a tree per host.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch
from tests.helpers.trees import cluster_resources, encode_hps, write_tree
from tests.helpers.waiting import wait_for
from tests.multihost.cluster import Cluster
from tests.multihost.platform_envs import NAMES, add_names, pod_env

BIN = Path(__file__).resolve().parents[1] / "bin"
LAUNCHER = str(Path(sys.executable).with_name("launcher"))
TRAIN = str(Path(sys.executable).with_name("train"))
RANK = str(BIN / "rank_tuple.py")
pytestmark = [pytest.mark.timeout(120)]


def run_pods(
    cluster: Cluster, argv_env: Callable[[int], tuple[list[str], dict[str, str]]], tmp: Path
) -> list[tuple[int, str, str]]:
    """Start one process per host, wait for all; (exit code, stdout, stderr) per host."""
    procs, files = [], []
    for i, host in enumerate(cluster.hosts):
        argv, env = argv_env(i)
        out, err = (tmp / f"{host.name}.out").open("wb"), (tmp / f"{host.name}.err").open("wb")
        files.append((out, err))
        procs.append(cluster.popen(host, argv, env=env, stdout=out, stderr=err))
    results = []
    for proc, (out, err) in zip(procs, files, strict=True):
        code = proc.wait(timeout=90)
        out.close()
        err.close()
        results.append((code, Path(out.name).read_text(), Path(err.name).read_text()))
    return results


def ranks(results: list[tuple[int, str, str]], cluster: Cluster) -> list[tuple[object, ...]]:
    """(rank, local rank, world size, node rank, master host index) of every rank, sorted."""
    index = {h.address: h.index for h in cluster.hosts}
    found = []
    for code, out, err in results:
        assert code == 0, err[-3000:]
        for line in re.findall(r"TUPLE (\{.*\})", out):
            t = json.loads(line)
            master = index.get(t["master"], t["master"])
            row = (t["rank"], t["local_rank"], t["world_size"], t["node_rank"], master)
            found.append((*row, len(t["sm_hosts"]), t["sm_current_host"] in t["sm_hosts"]))
    return sorted(found)


def test_every_platform_gives_the_same_ranks(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, no_leaks: LeakWatch
) -> None:
    cluster = cluster_factory(2, ("algo-1", "algo-2"))
    h1, h2 = cluster.hosts
    for names in NAMES.values():
        add_names(cluster, {h1: names[0], h2: names[1]})
    trees = {
        h.name: write_tree(
            tmp_path / h.name,
            h.name,
            ["algo-1", "algo-2"],
            encode_hps({"sagemaker_torch_distributed_enabled": True}),
            Path(RANK),
            resources=cluster_resources(["algo-1", "algo-2"]),
        )
        for h in cluster.hosts
    }
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    expected = [
        (0, 0, 4, 0, 1, 2, True),
        (1, 1, 4, 0, 1, 2, True),
        (2, 0, 4, 1, 1, 2, True),
        (3, 1, 4, 1, 1, 2, True),
    ]
    base = {"LAUNCHER_PROCS_PER_HOST": "2", "LAUNCHER_PEER_TIMEOUT": "60"}

    def sagemaker(i: int) -> tuple[list[str], dict[str, str]]:
        tree = trees[cluster.hosts[i].name]
        return [TRAIN], {**base, "SAGEMAKER_BASE_DIR": str(tree), "LAUNCHER_JOB_TOKEN": "t"}

    sm = run_pods(cluster, sagemaker, tmp_path)
    assert ranks(sm, cluster) == expected
    for platform in NAMES:

        def pod(i: int, platform: str = platform) -> tuple[list[str], dict[str, str]]:
            env = {**base, **pod_env(platform, i), "LAUNCHER_JOB_TOKEN_FILE": str(secret)}
            return [LAUNCHER, "run", RANK], env

        results = run_pods(cluster, pod, tmp_path)
        assert ranks(results, cluster) == expected, platform
        assert f"platform {platform.replace('trainer-v2', 'kubeflow')}:" in results[0][2]
        assert "NOT authenticated" not in results[0][2]


def test_a_pod_waits_for_its_leader_s_name_to_resolve(
    cluster_factory: Callable[..., Cluster], tmp_path: Path, no_leaks: LeakWatch
) -> None:
    """An Indexed Job whose leader's DNS record appears late (mpi-operator#481): the follower
    retries, naming the leader in its progress line, and the job runs once it resolves; the
    channel is unauthenticated, and says so."""
    cluster = cluster_factory(2, ("algo-1", "algo-2"))
    h1, h2 = cluster.hosts
    add_names(cluster, {h2: "train-1.train-svc"})
    env = {"LAUNCHER_PEER_TIMEOUT": "60", "LAUNCHER_PROCS_PER_HOST": "1"}
    err = tmp_path / "follower.err"
    with err.open("wb") as f:
        follower = cluster.popen(
            h2, [LAUNCHER, "run", RANK], env={**env, **pod_env("indexed-job", 1)}, stderr=f
        )
    wait_for(
        lambda: "cannot resolve train-0.train-svc" in err.read_text(),
        30,
        "the follower's progress line naming its leader",
        stop_if=lambda: None if follower.poll() is None else "the follower exited",
    )
    add_names(cluster, {h1: "train-0.train-svc"})
    leader = cluster.run(
        h1, [LAUNCHER, "run", RANK], timeout=60, env={**env, **pod_env("indexed-job", 0)}
    )
    assert leader.returncode == 0, leader.stderr
    assert follower.wait(timeout=60) == 0, err.read_text()
    assert "the control channel is NOT authenticated" in leader.stderr
    assert "TUPLE" in leader.stdout
