"""What Kubernetes gives each pod, per platform, for emulating pods in namespace hosts.

Shared by tests/multihost/test_platforms.py and bench/bench_platforms.py: `pod_env` is the
environment of pod `index` of a 2-pod x 2-rank job (PyTorchJob, Trainer v2, Indexed Job,
JobSet), `add_names` gives the namespace hosts the pods' stable DNS names.
"""

from __future__ import annotations

from collections.abc import Mapping

from tests.multihost.cluster import NETNS_ETC, Cluster, Host

__all__ = ["NAMES", "add_names", "pod_env"]

# The pods' names per platform, host 1 then host 2 (the leader first).
NAMES = {
    "kubeflow": ("mnist-master-0", "mnist-worker-0"),
    "trainer-v2": ("tj-node-0-0.tj", "tj-node-0-1.tj"),
    "indexed-job": ("train-0.train-svc", "train-1.train-svc"),
    "jobset": ("js-workers-0-0.js", "js-workers-0-1.js"),
}


def pod_env(platform: str, index: int) -> dict[str, str]:
    """What the platform gives pod `index` (0 leads) of a 2-pod job with 2 ranks per pod."""
    short = NAMES[platform][index].split(".")[0]
    if platform == "kubeflow":
        return {
            "MASTER_ADDR": "mnist-master-0",
            "MASTER_PORT": "23456",
            "WORLD_SIZE": "4",
            "RANK": str(index),
            "PET_NNODES": "2",
            "PET_NODE_RANK": str(index),
            "PET_NPROC_PER_NODE": "2",
            "HOSTNAME": short,
        }
    if platform == "trainer-v2":
        return {
            "PET_MASTER_ADDR": "tj-node-0-0.tj",
            "PET_MASTER_PORT": "29500",
            "PET_NNODES": "2",
            "PET_NODE_RANK": str(index),
            "PET_NPROC_PER_NODE": "2",
            "HOSTNAME": short,
        }
    common = {"JOB_COMPLETION_INDEX": str(index), "LAUNCHER_NNODES": "2", "HOSTNAME": short}
    if platform == "indexed-job":
        return {**common, "LAUNCHER_K8S_SUBDOMAIN": "train-svc", "LAUNCHER_PROCS_PER_HOST": "2"}
    return {
        **common,
        "LAUNCHER_JOBSET_NAME": "js",
        "LAUNCHER_JOBSET_RJOB": "workers",
        "LAUNCHER_JOBSET_JOB_INDEX": "0",
        "LAUNCHER_JOBSET_REPLICAS": "1",
        "LAUNCHER_PROCS_PER_HOST": "2",
    }


def add_names(cluster: Cluster, names: Mapping[Host, str]) -> None:
    """Give hosts more names on every host (a headless Service's records), in place: the
    bind-mounted /etc/hosts of running processes sees them at their next lookup."""
    for host in cluster.hosts:
        path = NETNS_ETC / host.netns / "hosts"
        extra = "".join(f"{h.address} {name}\n" for h, name in names.items())
        path.write_text(path.read_text() + extra)
