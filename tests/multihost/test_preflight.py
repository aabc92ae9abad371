"""Preflight across namespace hosts (CPU, gloo): every host runs the real launcher against its
own tree; the cross-host all_reduce and the storage checks run for real.

* a healthy 3-host cluster passes `launcher preflight` 10 times in a row (no false failure);
* a host whose link is throttled with `tc tbf` (both directions of its veth) is named by the
  pairwise search, on every host, exit 78;
* a host whose checkpoint directory is bind-mounted read-only in its own mount namespace is
  named by `train --preflight quick`, and no user code runs on any host.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.trees import cluster_resources, write_tree
from tests.multihost.cluster import Cluster
from tests.multihost.conftest import ClusterFactory
from tests.multihost.test_multihost import Job, Launcher

pytestmark = [pytest.mark.multihost]

LAUNCHER = str(Path(sys.executable).with_name("launcher"))
TRAIN = str(Path(sys.executable).with_name("train"))
FLOOR_GBPS = 0.05  # 400 Mbit/s: a veth on a loaded 2-core machine does several times this
THROTTLE = "100mbit"  # 0.0125 GB/s: four times under the floor
# Makes "$1" read-only for this process and its children only (a private mount namespace),
# then execs the rest of argv: nothing is pasted into the script.
_READ_ONLY_SH = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'


def _start(job: Job, name: str, argv: list[str], wrap: list[str] | None = None, **env: str) -> None:
    """Start `argv` on host `name` with its tree (written by `Job.start`'s code path)."""
    host = job.cluster.host(name)
    tree = job.root / "trees" / name
    if not tree.exists():
        write_tree(
            tree,
            name,
            job.names,
            job.hps,
            job.program,
            entry="prog.py",
            resources=cluster_resources(job.names),
        )
    log = job.root / f"{name}.log"
    full_env = {
        "SAGEMAKER_BASE_DIR": str(tree),
        "LAUNCHER_PEER_TIMEOUT": "30",
        "LAUNCHER_HEARTBEAT_TIMEOUT": "10",
        "LAUNCHER_PREFLIGHT_TIMEOUT": "60",
        **env,
    }
    with log.open("wb") as out:
        proc = job.cluster.popen(host, [*(wrap or []), *argv], env=full_env, stdout=out, stderr=out)
    job.launchers[name] = Launcher(host, proc, tree, log)


def _report(launcher: Launcher) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((launcher.tree / "output" / "preflight.json").read_text())
    return document


def _throttle(cluster: Cluster, name: str) -> None:
    """`tc tbf` on both ends of the host's veth: what it sends and what it receives."""
    host = cluster.host(name)
    tbf = ["root", "tbf", "rate", THROTTLE, "burst", "32kb", "latency", "100ms"]
    for netns, dev in ((host.netns, "eth0"), (cluster.plan.switch_netns, f"p{host.index}")):
        subprocess.run(
            ["ip", "netns", "exec", netns, "tc", "qdisc", "add", "dev", dev, *tbf],
            check=True,
            capture_output=True,
            timeout=10,
        )


# Ten whole jobs: 110-130 s measured on the 2-core machine while five jobs shared it (each
# preflight's time is mostly three probes importing torch at once); less on a quiet one.
@pytest.mark.timeout(240)
def test_a_healthy_3_host_cluster_passes_10_times_in_a_row(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    seconds = []
    for attempt in range(10):
        root = tmp_path / f"run-{attempt}"
        root.mkdir()
        job = Job(cluster, root, mode="noop")
        for name in job.names:
            _start(job, name, [LAUNCHER, "preflight"], LAUNCHER_PREFLIGHT_MIN_GBPS=str(FLOOR_GBPS))
        codes = job.wait_exits(60)
        assert codes == {"algo-1": 0, "algo-2": 0, "algo-3": 0}, job.report(f"run {attempt}")
        for launcher in job.launchers.values():
            report = _report(launcher)
            assert report["passed"] is True and report["bad_hosts"] == []
            assert not (launcher.tree / "output" / "failure").exists()
        leader = _report(job.launchers["algo-1"])
        checks = {(r["check"], r["host"]) for r in leader["rows"]}
        for name in job.names:
            assert {("cpu.matmul", name), ("dir.writable", name)} <= checks
        assert ("allreduce.cross", "*") in checks
        seconds.append(float(leader["seconds"]))
        job.assert_nothing_left()
    print(f"preflight wall time on 3 namespace hosts: {sorted(seconds)}")


@pytest.mark.timeout(90)
def test_a_host_with_a_throttled_link_is_named_by_the_pairwise_search(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    _throttle(cluster, "algo-3")
    job = Job(cluster, tmp_path, mode="noop")
    for name in job.names:
        _start(job, name, [LAUNCHER, "preflight", "--preflight-min-gbps", str(FLOOR_GBPS)])
    codes = job.wait_exits(80)
    assert codes == {"algo-1": 78, "algo-2": 78, "algo-3": 78}, job.report("exit codes")
    for name, launcher in job.launchers.items():
        failure = launcher.failure()
        assert failure.splitlines()[0] == "preflight failed on 1 host(s): algo-3", name
        assert "preflight FAIL algo-3: allreduce.slow_host" in failure
        report = _report(launcher)
        assert report["bad_hosts"] == ["algo-3"]
        pairs = {r["host"]: r["value"] for r in report["rows"] if r["check"] == "allreduce.pair"}
        assert set(pairs) == {"algo-1<->algo-2", "algo-1<->algo-3", "algo-2<->algo-3"}
        assert pairs["algo-1<->algo-2"] >= FLOOR_GBPS > pairs["algo-1<->algo-3"]
    assert "preflight FAIL algo-3" in job.launchers["algo-1"].output()
    job.assert_nothing_left()


@pytest.mark.timeout(90)
def test_a_read_only_checkpoint_dir_is_named_and_no_user_code_runs(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="hold")
    for name in job.names:
        checkpoints = tmp_path / "ckpt" / name
        checkpoints.mkdir(parents=True)
        # algo-2 sees its checkpoint folder read-only (a real read-only bind mount, in a mount
        # namespace of its own); the others write to theirs.
        wrap = (
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                _READ_ONLY_SH,
                "sh",
                str(checkpoints),
            ]
            if name == "algo-2"
            else []
        )
        _start(
            job,
            name,
            [TRAIN],
            wrap,
            LAUNCHER_PREFLIGHT="quick",
            LAUNCHER_CHECKPOINT_DIR=str(checkpoints),
        )
    codes = job.wait_exits(80)
    assert codes == {"algo-1": 78, "algo-2": 78, "algo-3": 78}, job.report("exit codes")
    assert not list(job.shared.glob("ready-*")), "user code ran"
    bad = tmp_path / "ckpt" / "algo-2"
    for name, launcher in job.launchers.items():
        failure = launcher.failure()
        assert failure.splitlines()[0] == "preflight failed on 1 host(s): algo-2", name
        assert f"preflight FAIL algo-2 checkpoints {bad}: dir.writable no" in failure
        assert "Read-only file system" in failure
    job.assert_nothing_left()
