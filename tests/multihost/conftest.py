"""Fixtures for multi-host tests: simulated clusters of network namespaces.

``cluster_factory(n_hosts=2, names=())`` returns a live ``Cluster`` (see cluster.py); every
cluster it made is torn down after the test and the test fails if the teardown left anything.
It requests ``no_leaks``, so processes the test started outside the cluster are checked too,
after the clusters are gone. Without root or network-namespace support the test is skipped
with the reason. Every test in this directory gets the ``multihost`` marker.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from tests.helpers.procwatch import LeakWatch, no_leaks
from tests.multihost.cluster import Cluster, ClusterError, sweep_stale

__all__ = ["cluster_factory", "netns_support", "no_leaks"]

ClusterFactory = Callable[..., Cluster]
_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in item.path.parents:
            item.add_marker(pytest.mark.multihost)


def _probe() -> str | None:
    """None when namespaces can be made here, else why not (shown as the skip reason)."""
    if os.geteuid() != 0:
        return "multihost tests need root (network namespaces)"
    missing = [t for t in ("ip", "unshare", "sshd", "ssh", "ssh-keygen") if not shutil.which(t)]
    missing = [t for t in missing if not Path("/usr/sbin", t).exists()]
    if missing:
        return f"multihost tests need {', '.join(missing)} (apt-get install iproute2 openssh-*)"
    name = f"mlt-probe-{os.getpid()}"
    add = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if add.returncode != 0:
        return f"`ip netns add` failed: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
    return None


@pytest.fixture(scope="session")
def netns_support() -> str | None:
    """Probe once per session; also removes clusters left by crashed earlier runs."""
    reason = _probe()
    if reason is None:
        sweep_stale()
    return reason


@pytest.fixture
def cluster_factory(
    no_leaks: LeakWatch, netns_support: str | None, tmp_path: Path
) -> Iterator[ClusterFactory]:
    if netns_support is not None:
        pytest.skip(netns_support)
    clusters: list[Cluster] = []

    def make(n_hosts: int = 2, names: Sequence[str] = ()) -> Cluster:
        cluster = Cluster.create(n_hosts, names, workdir=tmp_path)
        clusters.append(cluster)
        return cluster

    yield make
    errors = []
    for cluster in reversed(clusters):
        try:
            cluster.close()
        except ClusterError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("cluster teardown: " + "; ".join(errors), pytrace=False)
