"""Multi-host jobs across real network namespaces: every host runs `train` against its own tree.

Three simulated hosts (`cluster_factory`: namespaces on a bridge, own hostnames and hosts
files) each run the real `train` with a SageMaker tree naming hosts algo-1..3 and
`network_interface_name` eth0, torch distribution enabled: the leader is algo-1, found by name
through the namespace's hosts file. The scenarios are those of issue 4: real gloo training, a
host 20 s late, a host that never comes, a rank failure on a follower, a follower's launcher
SIGKILLed, a link taken down, the leader killed, SIGTERM to every launcher. After each, every
launcher has exited by itself and nothing is left in any namespace; the fixture then checks that
teardown leaves no namespace or process behind.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers.trees import cluster_resources, encode_hps, write_tree
from tests.helpers.waiting import poll_until, wait_for
from tests.multihost.cluster import Cluster, Host, netns_key, pids_in_netns
from tests.multihost.conftest import ClusterFactory

pytestmark = [pytest.mark.multihost, pytest.mark.timeout(60)]

TRAIN = str(Path(sys.executable).with_name("train"))
HEARTBEAT_S = 2.0
GRACE_S = 3.0

# The rank program. Hyperparameters arrive as `--key value` argv. Every rank records itself in
# the shared folder when it starts, and when it receives SIGTERM (then exits 143).
PROGRAM = r"""
import argparse, json, os, signal, socket, sys, time
from pathlib import Path

p = argparse.ArgumentParser()
p.add_argument("--mode")
p.add_argument("--dir")
p.add_argument("--fail-host", default="")
p.add_argument("--steps", type=int, default=5)
args, _ = p.parse_known_args()
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
host = os.environ["SM_CURRENT_HOST"]
shared = Path(args.dir)


def on_term(signum, frame):
    (shared / f"term-{rank}").write_text(host)
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)
keys = ("MASTER_ADDR", "GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "GROUP_RANK", "WORLD_SIZE")
me = {"rank": rank, "host": host, "hostname": socket.gethostname(), "pid": os.getpid()}
me.update({k: os.environ.get(k) for k in keys})
(shared / f"ready-{rank}").write_text(json.dumps(me))


def everyone_ready():
    while len(list(shared.glob("ready-*"))) < world:
        time.sleep(0.01)


if args.mode == "train":
    import gc
    import torch
    import torch.distributed as dist
    from torch import nn

    def train():
        torch.manual_seed(0)
        model = nn.parallel.DistributedDataParallel(nn.Linear(8, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        data = torch.Generator().manual_seed(rank)
        for _ in range(args.steps):
            x = torch.randn(64, 8, generator=data)
            loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        if rank == 0:
            torch.save(model.module.state_dict(), Path(os.environ["SM_MODEL_DIR"]) / "model.pt")
        return [round(v, 6) for v in model.module.weight.flatten().tolist()]

    dist.init_process_group("gloo")
    weights = train()
    print("RESULT " + json.dumps({**me, "weights": weights}), flush=True)
    # Everything that holds the process group (DDP, its reducer, the last loss's autograd graph
    # through the parameters' hooks) is released first, so that destroying the group joins
    # gloo's worker threads now. Left to interpreter exit, a worker that still owns a finished
    # work object can need the GIL while Python finalizes, and torch aborts the rank (SIGABRT,
    # "terminate called without an active exception"; docs/troubleshooting.md).
    gc.collect()
    dist.destroy_process_group()
elif args.mode == "fail" and host == args.fail_host:
    everyone_ready()
    raise RuntimeError(f"rank {rank} failed on purpose")
elif args.mode in ("hold", "fail"):
    time.sleep(120)  # the launchers must stop this long before
"""


@dataclass
class Launcher:
    host: Host
    proc: subprocess.Popen[bytes]
    tree: Path
    log: Path
    exited_at: float | None = None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def failure(self) -> str:
        return (self.tree / "output" / "failure").read_text()

    @property
    def succeeded(self) -> bool:
        return (self.tree / "output" / "success").exists()


class Job:
    """One `train` per simulated host, each with its own tree; a shared folder for the ranks.
    `program` is the ranks' code/prog.py (a subclass may give its own)."""

    program: str = PROGRAM

    def __init__(self, cluster: Cluster, root: Path, **hps: str) -> None:
        self.cluster = cluster
        self.root = root
        self.shared = root / "shared"
        self.shared.mkdir()
        self.names = [h.name for h in cluster.hosts]
        # Torch distribution on every host; the rank program's arguments as SageMaker encodes
        # them (`--dir <shared> --mode ...`).
        self.hps = {
            "sagemaker_job_name": json.dumps(f"multihost-{root.name}"),
            "sagemaker_torch_distributed_enabled": "true",
            **encode_hps({"dir": str(self.shared), **hps}),
        }
        self.launchers: dict[str, Launcher] = {}

    def start(self, name: str, **env: str) -> Launcher:
        host = self.cluster.host(name)
        tree = write_tree(
            self.root / "trees" / name,
            name,
            self.names,
            self.hps,
            self.program,
            entry="prog.py",
            resources=cluster_resources(self.names),
        )
        log = self.root / f"{name}.log"
        full_env = {
            "SAGEMAKER_BASE_DIR": str(tree),
            "LAUNCHER_PEER_TIMEOUT": "30",
            "LAUNCHER_HEARTBEAT_TIMEOUT": f"{HEARTBEAT_S:g}",
            "LAUNCHER_GRACE_PERIOD": f"{GRACE_S:g}",
            **env,
        }
        with log.open("wb") as out:
            proc = self.cluster.popen(host, [TRAIN], env=full_env, stdout=out, stderr=out)
        launcher = self.launchers[name] = Launcher(host, proc, tree, log)
        return launcher

    def start_all(self, **env: str) -> None:
        for name in self.names:
            self.start(name, **env)

    def exited_early(self) -> str | None:
        """The first launcher that has exited, as "NAME exited (CODE)"; None while all run."""
        for name, launcher in self.launchers.items():
            if (code := launcher.proc.poll()) is not None:
                return f"{name} exited ({code})"
        return None

    def wait_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        """Poll `condition` while every launcher runs; fail with their output at the deadline
        or as soon as one of them exits."""
        wait_for(condition, timeout, what, stop_if=self.exited_early, describe=self.output)

    def wait_ready(self, ranks: int = 3, timeout: float = 30) -> float:
        """Poll until `ranks` ranks have started; the time it happened."""
        self.wait_until(
            lambda: len(list(self.shared.glob("ready-*"))) >= ranks,
            timeout,
            f"{ranks} ranks to start",
        )
        return time.monotonic()

    def ranks(self) -> dict[int, dict[str, object]]:
        found = {}
        for path in self.shared.glob("ready-*"):
            info = json.loads(path.read_text())
            found[int(info["rank"])] = info
        return found

    def wait_exits(self, timeout: float) -> dict[str, int]:
        """Wait for every launcher to exit by itself; their exit codes (and exit times)."""
        codes: dict[str, int] = {}

        def all_exited() -> bool:
            for name, launcher in self.launchers.items():
                if name not in codes and (code := launcher.proc.poll()) is not None:
                    codes[name] = code
                    launcher.exited_at = time.monotonic()
            return len(codes) == len(self.launchers)

        wait_for(
            all_exited,
            timeout,
            "every launcher to exit",
            describe=lambda: self.report(f"only {sorted(codes)} exited"),
        )
        return codes

    def assert_nothing_left(self, timeout: float = 10) -> None:
        """No process of the job survives in any host namespace (ranks, watchdogs, launchers)."""
        keys = {k for h in self.cluster.hosts if (k := netns_key(h.netns))}
        assert len(keys) == len(self.cluster.hosts)
        if poll_until(lambda: not pids_in_netns(keys), timeout):
            return
        described = []
        for pid in pids_in_netns(keys):
            try:
                described.append(f"{pid}: {' '.join(psutil.Process(pid).cmdline())}")
            except psutil.Error:
                continue
        raise AssertionError(f"processes left in the namespaces: {described}")

    def report(self, what: str) -> str:
        """`what`, then the end of every launcher's output."""
        return "\n".join([what, self.output()])

    def output(self) -> str:
        """The last 3000 characters of each launcher's output, with its exit code."""
        return "\n".join(
            f"--- {name} (rc {launcher.proc.poll()}):\n{launcher.output()[-3000:]}"
            for name, launcher in self.launchers.items()
        )


def first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


# --- success ----------------------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_three_hosts_train_a_model_with_gloo(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="train", steps="5")
    # The default heartbeat timeout (10 s): this test is about training, not about heartbeats,
    # and three torch imports on two shared cores can starve a launcher for a moment.
    job.start_all(LAUNCHER_HEARTBEAT_TIMEOUT="10")
    codes = job.wait_exits(120)
    assert codes == {"algo-1": 0, "algo-2": 0, "algo-3": 0}, job.report("job failed")
    leader = cluster.host("algo-1")
    results = {}
    for name, launcher in job.launchers.items():
        assert launcher.succeeded and not (launcher.tree / "output" / "failure").exists()
        for m in re.finditer(r"^\[(algo-\d):(\d)\] RESULT (.*)$", launcher.output(), re.M):
            results[int(m[2])] = json.loads(m[3])
            assert m[1] == name
    assert sorted(results) == [0, 1, 2], job.report("missing RESULT lines")
    for rank, r in results.items():
        # Each rank ran on its own host (UTS hostname), in node order, with the leader's
        # address as the ranks reach it and eth0 from network_interface_name.
        assert r["host"] == r["hostname"] == f"algo-{rank + 1}"
        assert (r["GROUP_RANK"], r["WORLD_SIZE"]) == (str(rank), "3")
        assert r["MASTER_ADDR"] == leader.address
        assert r["GLOO_SOCKET_IFNAME"] == r["NCCL_SOCKET_IFNAME"] == "eth0"
    # DDP kept the replicas identical: the gradients really were averaged across hosts.
    assert results[0]["weights"] == results[1]["weights"] == results[2]["weights"]
    assert (job.launchers["algo-1"].tree / "model" / "model.pt").stat().st_size > 0
    assert "host algo-3 joined with 1 slot(s)" in job.launchers["algo-1"].output()
    job.assert_nothing_left()


@pytest.mark.timeout(90)
def test_a_host_20_s_late_still_joins(cluster_factory: ClusterFactory, tmp_path: Path) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="noop")
    job.start("algo-1")
    job.start("algo-2")
    started = time.monotonic()
    leader = job.launchers["algo-1"]
    while time.monotonic() - started < 20:  # the scenario: algo-3 starts 20 s late
        assert leader.proc.poll() is None and job.launchers["algo-2"].proc.poll() is None
        time.sleep(0.1)
    progress = re.findall(r"waiting for 1 host\(s\): algo-3$", leader.output(), re.M)
    assert len(progress) >= 3, job.report("no progress lines naming the missing host")
    job.start("algo-3")
    codes = job.wait_exits(30)
    assert codes == {"algo-1": 0, "algo-2": 0, "algo-3": 0}, job.report("late host failed")
    assert all(launcher.succeeded for launcher in job.launchers.values())
    # algo-2 joined 20 s (10 heartbeat timeouts) before the plan and was not declared lost.
    assert "lost" not in leader.output()
    job.assert_nothing_left()


def test_a_host_that_never_comes_fails_every_launcher_with_exit_3(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="noop")
    start = time.monotonic()
    job.start("algo-1", LAUNCHER_PEER_TIMEOUT="4")
    job.start("algo-2", LAUNCHER_PEER_TIMEOUT="4")
    codes = job.wait_exits(20)
    assert codes == {"algo-1": 3, "algo-2": 3}, job.report("expected exit 3")
    for name in ("algo-1", "algo-2"):
        launcher = job.launchers[name]
        assert launcher.exited_at is not None and launcher.exited_at - start < 4 + 3
        headline = first_line(launcher.failure())
        assert headline.startswith("hosts never arrived within 4 s: algo-3"), headline
    assert not list(job.shared.glob("ready-*"))  # no rank started anywhere
    job.assert_nothing_left()


# --- failures -----------------------------------------------------------------------------------


def test_a_rank_failing_on_a_follower_stops_every_host_with_one_root_cause(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="fail", **{"fail-host": "algo-2"})
    job.start_all()
    ready = job.wait_ready()
    codes = job.wait_exits(20)
    assert codes == {"algo-1": 1, "algo-2": 1, "algo-3": 1}, job.report("expected exit 1")
    cause = "rank 1 on algo-2 exited with code 1: RuntimeError: rank 1 failed on purpose"
    for launcher in job.launchers.values():
        assert first_line(launcher.failure()) == cause
        assert not launcher.succeeded
        assert launcher.exited_at is not None and launcher.exited_at - ready < 5
    # The healthy hosts' ranks were stopped (they would have slept for 120 s).
    assert {p.read_text() for p in job.shared.glob("term-*")} == {"algo-1", "algo-3"}
    job.assert_nothing_left()


def test_a_follower_launcher_killed_with_sigkill_aborts_the_job(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="hold")
    job.start_all()
    job.wait_ready()
    victim = job.launchers["algo-2"]
    assert any("train" in part for part in psutil.Process(victim.proc.pid).cmdline())
    victim.proc.send_signal(signal.SIGKILL)
    codes = job.wait_exits(HEARTBEAT_S + GRACE_S + 10)
    assert codes == {"algo-1": 1, "algo-2": -signal.SIGKILL, "algo-3": 1}, job.report("codes")
    for name in ("algo-1", "algo-3"):
        headline = first_line(job.launchers[name].failure())
        assert headline.startswith("host algo-2 was lost ("), headline
    # Every rank was stopped: algo-2's by its launcher's watchdog, the others by theirs.
    assert {p.read_text() for p in job.shared.glob("term-*")} == {"algo-1", "algo-2", "algo-3"}
    job.assert_nothing_left()


def test_a_link_taken_down_is_noticed_by_heartbeat_on_both_sides(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="hold")
    job.start_all()
    job.wait_ready()
    cut = time.monotonic()
    cluster.link_down(cluster.host("algo-3"))
    codes = job.wait_exits(HEARTBEAT_S * 2 + GRACE_S + 10)
    assert codes == {"algo-1": 1, "algo-2": 1, "algo-3": 1}, job.report("expected exit 1")
    lost = f"host algo-3 was lost (no heartbeat for {HEARTBEAT_S:g} s)"
    assert first_line(job.launchers["algo-1"].failure()) == lost
    assert first_line(job.launchers["algo-2"].failure()) == lost
    alone = first_line(job.launchers["algo-3"].failure())
    assert alone == f"lost the leader algo-1 (no heartbeat for {HEARTBEAT_S:g} s)"
    for launcher in job.launchers.values():
        assert launcher.exited_at is not None
        # Silence is checked every timeout/4, so it is noticed 0.75-1.25 timeouts after the cut.
        assert HEARTBEAT_S * 0.7 <= launcher.exited_at - cut < HEARTBEAT_S * 1.5 + 2
    job.assert_nothing_left()


def test_the_leader_killed_aborts_every_follower(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="hold")
    job.start_all()
    job.wait_ready()
    killed = time.monotonic()
    job.launchers["algo-1"].proc.send_signal(signal.SIGKILL)
    codes = job.wait_exits(HEARTBEAT_S + GRACE_S + 10)
    assert codes == {"algo-1": -signal.SIGKILL, "algo-2": 1, "algo-3": 1}, job.report("codes")
    for name in ("algo-2", "algo-3"):
        launcher = job.launchers[name]
        assert first_line(launcher.failure()).startswith("lost the leader algo-1 (")
        assert launcher.exited_at is not None and launcher.exited_at - killed < 3
    job.assert_nothing_left()


def test_sigterm_to_every_launcher_reaches_every_rank_and_exits_143(
    cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="hold")
    job.start_all()
    job.wait_ready()
    for launcher in job.launchers.values():
        launcher.proc.send_signal(signal.SIGTERM)
    codes = job.wait_exits(GRACE_S + 10)
    assert codes == {"algo-1": 143, "algo-2": 143, "algo-3": 143}, job.report("expected 143")
    # Every rank handled the forwarded SIGTERM itself (it writes term-<rank>, then exits 143).
    terms = {p.name: p.read_text() for p in job.shared.glob("term-*")}
    assert terms == {"term-0": "algo-1", "term-1": "algo-2", "term-2": "algo-3"}
    for launcher in job.launchers.values():
        assert "SIGTERM" in first_line(launcher.failure())
    job.assert_nothing_left()


# --- a stop signal while the hosts meet (issue 12, point 3) --------------------------------------


@pytest.mark.parametrize("stopped", ["algo-1", "algo-2"])
def test_a_launcher_stopped_while_the_hosts_meet_stops_every_host_at_once(
    cluster_factory: ClusterFactory, tmp_path: Path, stopped: str
) -> None:
    """algo-3 never comes, so algo-1 and algo-2 are meeting (peer timeout 30 s) when one of
    them gets SIGTERM: it tells the other over the channel and both exit 143 at once, each
    with the same root cause naming the host and the signal."""
    cluster = cluster_factory(3)
    job = Job(cluster, tmp_path, mode="noop")
    job.start("algo-1")
    job.start("algo-2")
    leader = job.launchers["algo-1"]
    job.wait_until(lambda: "host algo-2 joined" in leader.output(), 30, "algo-2 to join")
    sent = time.monotonic()
    job.launchers[stopped].proc.send_signal(signal.SIGTERM)
    codes = job.wait_exits(15)
    assert codes == {"algo-1": 143, "algo-2": 143}, job.report("expected 143 on both")
    cause = f"the job was stopped by SIGTERM on {stopped} while the hosts were meeting"
    for launcher in job.launchers.values():
        assert first_line(launcher.failure()) == cause, job.report("root cause")
        assert not launcher.succeeded
        # Not the 30 s peer timeout: the other host learnt it over the channel.
        assert launcher.exited_at is not None and launcher.exited_at - sent < 5
    assert "Traceback" not in leader.output() + job.launchers["algo-2"].output()
    assert not list(job.shared.glob("ready-*"))  # no rank started anywhere
    job.assert_nothing_left()
