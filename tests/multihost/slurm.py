"""A real Slurm cluster on a simulated one: Debian's slurm-wlm and munge in network namespaces.

`SlurmCluster.start(cluster)` takes a `Cluster` whose first host is the controller and whose
other hosts are compute nodes: it writes a private munge key and a slurm.conf under the
cluster's work folder, starts `munged` (its socket in that folder, so that the machine's own
munge, if any, is untouched) and `slurmctld` on the controller and one `slurmd -N <name>` on
each node (each in its host's namespace, with its own UTS hostname), and waits until every node
is idle. `sbatch`/`srun` then run on the controller with `env()` (SLURM_CONF). Every daemon and
every job step lives inside the cluster's namespaces, so `Cluster.close` ends them all.

What is not the production set-up, and why: `proctrack/linuxproc` and `task/none` instead of
the cgroup plugins (the namespaces share this machine's one cgroup tree; a second slurmd would
fight over it), the daemons run as root (`SlurmUser=root`: there is no slurm user to switch to
in a test), and every node declares the machine's real CPU count (slurmd checks it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.waiting import wait_for
from tests.multihost.cluster import Cluster, Host

__all__ = ["SLURM_PROGRAMS", "SlurmCluster", "missing_programs"]

SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "sinfo")
START_TIMEOUT_S = 60.0


def missing_programs() -> list[str]:
    """The Slurm and munge programs this machine lacks (apt-get install slurm-wlm munge)."""
    return [p for p in SLURM_PROGRAMS if not (shutil.which(p) or Path("/usr/sbin", p).exists())]


def _conf(cluster: Cluster, folder: Path, munge_socket: Path) -> str:
    ctl, nodes = cluster.hosts[0], cluster.hosts[1:]
    cpus = os.cpu_count() or 1
    lines = [
        "ClusterName=mlt",
        f"SlurmctldHost={ctl.name}({ctl.address})",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={folder}/state",
        f"SlurmdSpoolDir={folder}/spool-%n",
        f"SlurmctldPidFile={folder}/slurmctld.pid",
        f"SlurmdPidFile={folder}/slurmd-%n.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log",
        f"SlurmdLogFile={folder}/slurmd-%n.log",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU",
        "MpiDefault=none",
        "ReturnToService=2",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=30",
        "InactiveLimit=0",
        "KillWait=5",
        "MinJobAge=5",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        *(f"NodeName={n.name} NodeAddr={n.address} CPUs={cpus} State=UNKNOWN" for n in nodes),
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE",
    ]
    return "\n".join(lines) + "\n"


@dataclass
class SlurmCluster:
    """A running Slurm on `cluster`: hosts[0] is the controller, the others the nodes."""

    cluster: Cluster
    folder: Path
    conf: Path

    @property
    def controller(self) -> Host:
        return self.cluster.hosts[0]

    @property
    def nodes(self) -> tuple[Host, ...]:
        return self.cluster.hosts[1:]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), **(extra or {})}

    @classmethod
    def start(cls, cluster: Cluster) -> SlurmCluster:
        """Start munged, slurmctld and the slurmds; return once every node is idle. Raises
        `WaitTimeout` naming the daemon's log when the cluster does not come up."""
        folder = cluster.workdir / "slurm"
        (folder / "state").mkdir(parents=True)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        socket = folder / "munge.sock"
        conf = folder / "slurm.conf"
        conf.write_text(_conf(cluster, folder, socket))
        # `ip netns exec` mounts a fresh /sys, which hides /sys/fs/cgroup; slurmd's cgroup
        # plugin only needs to find the hierarchy (no plugin used here puts tasks in cgroups),
        # so it reads this machine's through pid 1's root.
        (folder / "cgroup.conf").write_text(
            "CgroupPlugin=cgroup/v1\nCgroupMountpoint=/proc/1/root/sys/fs/cgroup\n"
        )
        for node in cluster.hosts[1:]:
            (folder / f"spool-{node.name}").mkdir()
        slurm = cls(cluster, folder, conf)
        ctl = slurm.controller
        munged = [
            "munged", "--foreground", "--force", f"--socket={socket}", f"--key-file={key}",
            f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
            f"--seed-file={folder}/munged.seed",
        ]  # fmt: skip
        out = (folder / "daemons.out").open("ab")
        cluster.popen(ctl, munged, stdout=out, stderr=out)
        wait_for(socket.exists, START_TIMEOUT_S, f"munged's socket ({folder}/munged.log)")
        env = slurm.env()
        cluster.popen(ctl, ["slurmctld", "-D", "-f", str(conf)], env=env, stdout=out, stderr=out)
        for node in slurm.nodes:
            argv = ["slurmd", "-D", "-N", node.name, "-f", str(conf)]
            cluster.popen(node, argv, env=env, stdout=out, stderr=out)
        wait_for(
            slurm.all_idle,
            START_TIMEOUT_S,
            f"{len(slurm.nodes)} idle Slurm nodes",
            describe=lambda: slurm.run(["sinfo", "-N"], timeout=10).stdout + slurm.logs(),
        )
        return slurm

    def run(
        self, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """A Slurm client command (sbatch, srun, sinfo, ...) on the controller."""
        return self.cluster.run(self.controller, argv, timeout=timeout, env=self.env(env))

    def all_idle(self) -> bool:
        out = self.run(["sinfo", "-h", "-N", "-o", "%N %T"], timeout=10).stdout.split()
        states = dict(zip(out[::2], out[1::2], strict=False))
        return all(states.get(n.name) == "idle" for n in self.nodes)

    def logs(self) -> str:
        """The daemons' logs, last lines of each, for a failure message."""
        parts = []
        for log in [*sorted(self.folder.glob("*.log")), self.folder / "daemons.out"]:
            if log.exists():
                tail = log.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)
