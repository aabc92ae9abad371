"""MPI and Horovod start-up against the peers, side by side on simulated hosts (needs root).

    .venv/bin/python -m bench.bench_mpi_horovod [--repeats 3] [--json out.json]

Every run builds a fresh 2-host cluster of network namespaces (tests/multihost/cluster.py).

1. **MPI, last host up -> all ranks running.** Ours: the leader's `train` is started first and
   has announced itself; then the follower's `train` starts (t0). The rank program records
   `time.time()` as its first statement; the figure is the last rank's stamp minus t0, and the
   teardown is from the last rank's end to the last `train`'s exit. The toolkit's procedure
   (sagemaker-contract.md §10.5) is re-enacted with the same tools: the master polls the worker
   with a real SSH login every 1 s (the toolkit's `_can_connect` interval), then runs mpirun
   with the same flags. The worker side is re-enacted too: a process that waits for the master's
   sshd with a real login, 1 s apart, then becomes sshd; t0 is its start. The toolkit itself cannot
   run here: its worker appends the environment to /etc/environment and its SSH set-up uses
   root's ~/.ssh, neither acceptable on a shared machine; its fixed 30 s sleeps at the end are
   constants of its code (§10.5 steps 4 and 6), added to its teardown, not slept.
2. **Horovod gloo, whole-job wall time for a no-op script** (and for a script that does
   `hvd.init()`, one allreduce and `hvd.shutdown()`): ours (`train` with LAUNCHER_BACKEND=horovod
   on both hosts, started together) vs `horovodrun --gloo -H algo-1:1,algo-2:1` run on algo-1
   with sshd on both hosts. horovodrun runs in a private mount namespace whose ssh_config sets
   `UserKnownHostsFile /dev/null`, and with HOME in a scratch folder, so it writes nothing
   under root's home.

Figures are medians over `--repeats`; the machine is shared, so each repeat runs the peers back
to back. Results go to stdout as Markdown and, with `--json`, to a file.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench.common import ROOT, byte_compile, median
from tests.helpers.trees import cluster_resources, encode_hps, write_trees
from tests.multihost.cluster import Cluster

PY = sys.executable
HOROVODRUN = str(Path(PY).parent / "horovodrun")
MPI_FLAGS = [
    "--allow-run-as-root",
    "--tag-output",
    "-mca",
    "btl_tcp_if_include",
    "eth0",
    "-mca",
    "oob_tcp_if_include",
    "eth0",
    "-mca",
    "plm_rsh_no_tree_spawn",
    "1",
    "-bind-to",
    "none",
    "-map-by",
    "slot",
    "-mca",
    "pml",
    "ob1",
    "-mca",
    "btl",
    "^openib",
    "-mca",
    "orte_abort_on_non_zero_status",
    "1",
    "-mca",
    "btl_vader_single_copy_mechanism",
    "none",
]
TOOLKIT_END_SLEEP_S = 30.0  # master: sleep(30) after mpirun; worker: sleep(30), then 30 s polls

STAMP = """import time, os, sys
t = time.time()
from mpi4py import MPI
rank = MPI.COMM_WORLD.Get_rank()
MPI.COMM_WORLD.Barrier()
with open(os.path.join(sys.argv[sys.argv.index("--out") + 1], f"rank-{rank}"), "w") as f:
    f.write(f"{t} {time.time()}")
"""
NOOP = "pass\n"
HVD_INIT = """import horovod.torch as hvd, torch
hvd.init()
hvd.allreduce(torch.ones(1))
hvd.shutdown()
"""
# A master that does what sagemaker_training.mpi.MasterRunner does, with our ssh config.
TOOLKIT_MASTER = """import subprocess, sys, time
cfg, worker, *mpirun = sys.argv[1:]
while subprocess.run(["ssh", "-F", cfg, worker, "true"], capture_output=True).returncode:
    time.sleep(1)
sys.exit(subprocess.run(mpirun).returncode)
"""
# A worker that does what WorkerRunner does before orted arrives: wait for the master's sshd
# (a real login, 1 s apart), then become sshd (its /etc/environment write is left out).
TOOLKIT_WORKER = """import os, subprocess, sys, time
cfg, master, sshd_conf = sys.argv[1:]
while subprocess.run(["ssh", "-F", cfg, master, "true"], capture_output=True).returncode:
    time.sleep(1)
os.execv("/usr/sbin/sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", sshd_conf])
"""


def _reader(
    proc: subprocess.Popen[bytes], lines: list[str], marker: str, seen: threading.Event
) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode(errors="replace")
        lines.append(line)
        if marker in line:
            seen.set()


def make_trees(
    root: Path, cluster: Cluster, program: str, hps: Mapping[str, object]
) -> dict[str, Path]:
    """One SageMaker tree per host at `root/<host>` running `program` (its text), as the
    tests in tests/multihost/test_mpi_horovod.py build them: no instance groups, eth0."""
    hosts = [h.name for h in cluster.hosts]
    resources = cluster_resources(hosts, instance_groups=False)
    return write_trees(root, hosts, encode_hps(hps), program, entry="prog.py", resources=resources)


def stamps(folder: Path) -> list[tuple[float, float]]:
    out = []
    for path in sorted(folder.glob("rank-*")):
        start, end = path.read_text().split()
        out.append((float(start), float(end)))
    return out


def mpi_ours(cluster: Cluster, root: Path) -> dict[str, float]:
    out = root / "stamps"
    out.mkdir(parents=True)
    hps = {"sagemaker_mpi_enabled": True, "out": str(out)}
    trees = make_trees(root / "trees", cluster, STAMP, hps)
    env = {"LAUNCHER_JOB_TOKEN": "bench", "PYTHONUNBUFFERED": "1"}
    h1, h2 = cluster.hosts
    lines: list[str] = []
    seen = threading.Event()
    leader = cluster.popen(
        h1,
        [PY, "-m", "launcher", "train"],
        env={**env, "SAGEMAKER_BASE_DIR": str(trees[h1.name])},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    threading.Thread(target=_reader, args=(leader, lines, "leading 2 hosts", seen)).start()
    if not seen.wait(60):
        raise RuntimeError("".join(lines))
    t0 = time.time()
    follower = cluster.popen(
        h2,
        [PY, "-m", "launcher", "train"],
        env={**env, "SAGEMAKER_BASE_DIR": str(trees[h2.name])},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    codes = (follower.wait(120), leader.wait(120))
    t_end = time.time()
    got = stamps(out)
    if codes != (0, 0) or len(got) != 2:
        raise RuntimeError(f"ours failed {codes}: {''.join(lines)}")
    return {
        "start_s": max(s for s, _ in got) - t0,
        "teardown_s": t_end - max(e for _, e in got),
        "wall_s": t_end - t0,
    }


def mpi_toolkit(cluster: Cluster, root: Path) -> dict[str, float]:
    out = root / "stamps"
    out.mkdir(parents=True)
    (root / "stamp.py").write_text(STAMP)
    (root / "master.py").write_text(TOOLKIT_MASTER)
    (root / "worker.py").write_text(TOOLKIT_WORKER)
    h1, h2 = cluster.hosts
    cluster.start_sshd(h2)  # only to have its sshd configuration written
    cluster.stop_sshd(h2)
    sshd_conf = cluster.ssh_dir / f"sshd-{h2.name}.conf"
    cluster.start_sshd(h1)
    mpirun = ["mpirun", "--host", "algo-1,algo-2", "-np", "2", *MPI_FLAGS]
    mpirun += ["-mca", "plm_rsh_args", f"-F {cluster.ssh_config}"]
    mpirun += [PY, "-m", "mpi4py", str(root / "stamp.py"), "--out", str(out)]
    master = cluster.popen(
        h1,
        [PY, str(root / "master.py"), str(cluster.ssh_config), "algo-2", *mpirun],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)  # the master is polling (phase relative to t0: arbitrary, as in real life)
    t0 = time.time()
    worker = cluster.popen(
        h2,
        [PY, str(root / "worker.py"), str(cluster.ssh_config), "algo-1", str(sshd_conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    code = master.wait(120)
    t_end = time.time()
    got = stamps(out)
    worker.terminate()
    worker.wait(10)
    cluster.stop_sshd(h1)
    if code != 0 or len(got) != 2:
        raise RuntimeError(f"toolkit re-enactment failed ({code})")
    return {
        "start_s": max(s for s, _ in got) - t0,
        "teardown_s": t_end - max(e for _, e in got) + TOOLKIT_END_SLEEP_S,
        "wall_s": t_end - t0 + TOOLKIT_END_SLEEP_S,
    }


def hvd_ours(cluster: Cluster, root: Path, program: str) -> float:
    trees = make_trees(root / "trees", cluster, program, {})
    env = {"LAUNCHER_JOB_TOKEN": "bench", "LAUNCHER_BACKEND": "horovod"}
    t0 = time.time()
    procs = [
        cluster.popen(
            h,
            [PY, "-m", "launcher", "train"],
            env={**env, "SAGEMAKER_BASE_DIR": str(trees[h.name])},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for h in cluster.hosts
    ]
    codes = [p.wait(120) for p in procs]
    wall = time.time() - t0
    if codes != [0, 0]:
        raise RuntimeError(f"ours (horovod) failed: {codes}")
    return wall


def hvd_horovodrun(cluster: Cluster, root: Path, program: str) -> float:
    (root / "prog.py").write_text(program)
    home = root / "home"
    home.mkdir()
    ssh_conf = root / "etc_ssh_config"
    ssh_conf.write_text(
        "Host *\n  UserKnownHostsFile /dev/null\n  GlobalKnownHostsFile /dev/null\n"
        "  LogLevel ERROR\n"
    )
    h1, h2 = cluster.hosts
    for host in (h1, h2):
        cluster.start_sshd(host)
    argv = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        'mount --bind "$1" /etc/ssh/ssh_config && shift && exec "$@"',
        "sh",
        str(ssh_conf),
        HOROVODRUN,
        "-np",
        "2",
        "-H",
        "algo-1:1,algo-2:1",
        "--gloo",
        "--network-interface",
        "eth0",
        "--ssh-identity-file",
        str(cluster.client_key),
        PY,
        str(root / "prog.py"),
    ]
    t0 = time.time()
    result = cluster.run(h1, argv, timeout=120, env={"HOME": str(home)}, cwd=root)
    wall = time.time() - t0
    for host in (h1, h2):
        cluster.stop_sshd(host)
    if result.returncode != 0:
        raise RuntimeError(f"horovodrun failed: {result.stdout}\n{result.stderr}")
    return wall


def main() -> int:
    byte_compile()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip", default="", help="comma list of: mpi, hvd, hvd-init")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    known_hosts = Path.home() / ".ssh"
    had_ssh_dir = known_hosts.exists()
    results: dict[str, Any] = {"ours_mpi": [], "toolkit_mpi": [], "hvd": {}}
    for i in range(args.repeats):
        for name, fn in (("ours_mpi", mpi_ours), ("toolkit_mpi", mpi_toolkit)):
            if "mpi" in skip:
                continue
            with tempfile.TemporaryDirectory() as tmp, Cluster.create(2) as cluster:
                results[name].append(fn(cluster, Path(tmp)))
        for label, program in (("no-op", NOOP), ("hvd init+allreduce", HVD_INIT)):
            if ("hvd" if label == "no-op" else "hvd-init") in skip:
                continue
            row = results["hvd"].setdefault(label, {"ours": [], "horovodrun": []})
            for peer, hvd_fn in (("ours", hvd_ours), ("horovodrun", hvd_horovodrun)):
                with tempfile.TemporaryDirectory() as tmp, Cluster.create(2) as cluster:
                    row[peer].append(hvd_fn(cluster, Path(tmp), program))
        print(f"repeat {i + 1}/{args.repeats} done", file=sys.stderr)
    if not had_ssh_dir and known_hosts.exists():
        print(f"warning: {known_hosts} was created", file=sys.stderr)
    print(report(results, args.repeats))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


def report(results: dict[str, Any], repeats: int) -> str:
    lines = [f"Medians of {repeats} repeats, 2 simulated hosts x 1 rank.", ""]
    if results["ours_mpi"]:
        lines += [
            "| MPI job | last host up -> all ranks running | last rank done -> every host "
            "exited | whole job |",
            "|---|---|---|---|",
        ]
        for name, label in (("ours_mpi", "ours"), ("toolkit_mpi", "toolkit procedure")):
            rows = results[name]
            cells = [median([r[k] for r in rows]) for k in ("start_s", "teardown_s", "wall_s")]
            lines.append(f"| {label} | " + " | ".join(f"{c:.2f} s" for c in cells) + " |")
        ours = median([r["start_s"] for r in results["ours_mpi"]])
        peer = median([r["start_s"] for r in results["toolkit_mpi"]])
        lines += ["", f"Start ratio ours/toolkit: {ours / peer:.2f}x", ""]
    if results["hvd"]:
        lines += [
            "| Horovod gloo, whole job | ours | horovodrun --gloo | ratio |",
            "|---|---|---|---|",
        ]
        for label, row in results["hvd"].items():
            ours, peer = median(row["ours"]), median(row["horovodrun"])
            lines.append(f"| {label} | {ours:.2f} s | {peer:.2f} s | {ours / peer:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
