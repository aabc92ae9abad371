"""Multi-host figures (issue 4): failure teardown, start of a 2-host job, and scale.

    .venv/bin/python -m bench.bench_multihost                     # everything (needs root)
    .venv/bin/python -m bench.bench_multihost --only scale --hosts 2,8,32,64 --rounds 3
    .venv/bin/python -m bench.bench_multihost --json out.json --svg docs/multihost-scale.svg

Peers run side by side in the same run: every round runs each contender once, alternating, so
load from other users of a shared machine falls on both alike. Medians are reported with ratios.
Simulated hosts are network namespaces (tests/multihost/cluster.py), each with its own hostname
and hosts file; every host runs its own launcher against its own SageMaker tree.

Sections (`--only`):

* `teardown`: 3 hosts, one rank each. Once every rank is up, the rank on algo-2 writes
  `time.monotonic()` (system-wide, so comparable across processes) and exits 1; the others
  sleep. Teardown = from that stamp to the moment the last launcher has exited. Ours: `train`
  on each host. torchrun: `--nnodes 3 --rdzv-backend c10d --max-restarts 0`, capped at `--cap`
  seconds (a launcher still running then is killed and the round counts as "> cap").
* `start`: 2 hosts. Host 1's launcher is started and waited for until its port (our control
  port, torchrun's c10d store) is in LISTEN state inside its namespace; then host 2's launcher
  is started at t0. Every rank stamps `time.monotonic()` first thing. Start = last rank's
  stamp - t0: from "the last host is up" to "all ranks run".
* `scale`: `launcher local --hosts H --nproc-per-host 1` with a no-op rank (no torch) for each
  H: total wall time, and the leader's own rendezvous cost from its log line "plan sent to H
  hosts ... rendezvous CPU X ms (Y ms/host)": the leader process's CPU time from listening to
  the plan sent. torchrun with H local c10d agents is run for `--torchrun-hosts` as reference.
  `--svg` plots it (bench/plot.py).

Nothing is left running: between rounds every process in the namespaces must be gone (those
still alive 5 s after a round count as orphans and are killed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.common import VENV_BIN, byte_compile, median
from bench.plot import Panel, Series, panels
from tests.helpers.trees import cluster_resources, encode_hps, write_tree
from tests.helpers.waiting import poll_until
from tests.multihost.cluster import Cluster, Host, netns_key, pids_in_netns

TRAIN = str(VENV_BIN / "train")
TORCHRUN = str(VENV_BIN / "torchrun")
LAUNCHER = str(VENV_BIN / "launcher")
CONTROL_PORT = 7787

# No torch: what is measured is the launchers. Arguments arrive as `--key value` pairs.
PROGRAM = r"""
import os, socket, sys, time
from pathlib import Path
stamp = time.monotonic()
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
folder = Path(args["--dir"])
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
(folder / f"start-{rank}").write_text(repr(stamp))
if args["--mode"] == "fail":
    if socket.gethostname() == args["--fail-host"]:
        while len(list(folder.glob("start-*"))) < world:
            time.sleep(0.001)
        (folder / "fail").write_text(repr(time.monotonic()))
        sys.exit(1)
    time.sleep(300)
"""


# --- helpers ----------------------------------------------------------------------------------


def kill_everything(cluster: Cluster, timeout: float = 5.0) -> int:
    """Wait for the namespaces to empty; kill and count what is left (orphans)."""
    keys = {k for h in cluster.hosts if (k := netns_key(h.netns))}
    poll_until(lambda: not pids_in_netns(keys), timeout, poll_s=0.02)
    left = pids_in_netns(keys)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(left)


def listening(cluster: Cluster, host: Host, port: int) -> bool:
    """Whether `port` is in LISTEN state inside `host`'s namespace (/proc/net/tcp* there)."""
    out = cluster.run(host, ["cat", "/proc/net/tcp", "/proc/net/tcp6"], timeout=10).stdout
    wanted = f":{port:04X}"
    return any(
        len(f) > 3 and f[1].endswith(wanted) and f[3] == "0A"
        for f in (line.split() for line in out.splitlines())
    )


def wait_listening(cluster: Cluster, host: Host, port: int, timeout: float = 30) -> None:
    if not poll_until(lambda: listening(cluster, host, port), timeout, poll_s=0.02):
        raise RuntimeError(f"nothing listens on {host.name}:{port} after {timeout} s")


def watch_exits(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, float]:
    """Record, per launcher, the monotonic time at which it exits (filled in by threads)."""
    exits: dict[str, float] = {}

    def wait(name: str, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        exits[name] = time.monotonic()

    for name, proc in procs.items():
        threading.Thread(target=wait, args=(name, proc), daemon=True).start()
    return exits


def wait_all(exits: dict[str, float], n: int, timeout: float) -> bool:
    """Whether `n` launchers exited within `timeout` (their times are taken by the threads of
    `watch_exits`, so this poll's period does not bias them)."""
    return poll_until(lambda: len(exits) == n, timeout, poll_s=0.005)


def ours_env(tree: Path) -> dict[str, str]:
    return {
        "SAGEMAKER_BASE_DIR": str(tree),
        "LAUNCHER_PEER_TIMEOUT": "60",
        "LAUNCHER_GRACE_PERIOD": "5",
    }


def torchrun_argv(n: int, endpoint: str, run_id: str, hps: dict[str, str]) -> list[str]:
    argv = [TORCHRUN, "--nnodes", str(n), "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    argv += ["--rdzv-endpoint", endpoint, "--rdzv-id", run_id, "--max-restarts", "0"]
    return [*argv, "prog.py", *(x for k, v in hps.items() for x in (f"--{k}", v))]


def stamp_lines(proc: subprocess.Popen[bytes], log: Path) -> None:
    """Copy a launcher's output to `log`, each line prefixed with its arrival time."""
    assert proc.stdout is not None
    with log.open("w") as out:
        for line in proc.stdout:
            out.write(f"{time.monotonic():.6f} {line.decode(errors='replace')}")
            out.flush()


def stamp_of(log: Path, fragment: str) -> float | None:
    for line in log.read_text().splitlines():
        if fragment in line:
            return float(line.split(" ", 1)[0])
    return None


Starter = Callable[[Host, int], subprocess.Popen[bytes]]


def starters(
    cluster: Cluster, root: Path, n: int, hps: dict[str, str], *, port: int, run_id: str
) -> dict[str, tuple[Starter, int]]:
    """For each contender: how to start its launcher on the i-th host, and its listening port."""
    names = [h.name for h in cluster.hosts[:n]]
    (root / "code").mkdir(parents=True, exist_ok=True)
    (root / "code" / "prog.py").write_text(PROGRAM)

    # The trees of tests/multihost/test_multihost.py: torch distribution, eth0, one group.
    tree_hps = {
        "sagemaker_job_name": json.dumps(f"multihost-{root.name}"),
        "sagemaker_torch_distributed_enabled": "true",
        **encode_hps(hps),
    }

    def ours(host: Host, i: int) -> subprocess.Popen[bytes]:
        tree = write_tree(
            root / "trees" / host.name,
            host.name,
            names,
            tree_hps,
            PROGRAM,
            entry="prog.py",
            resources=cluster_resources(names),
        )
        log = root / f"ours-{host.name}.log"
        proc = cluster.popen(
            host, [TRAIN], env=ours_env(tree), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        threading.Thread(target=stamp_lines, args=(proc, log), daemon=True).start()
        return proc

    def torchrun(host: Host, i: int) -> subprocess.Popen[bytes]:
        argv = torchrun_argv(n, f"{cluster.hosts[0].address}:{port}", run_id, hps)
        log = (root / f"torchrun-{host.name}.log").open("wb")
        env = {"GLOO_SOCKET_IFNAME": "eth0", "OMP_NUM_THREADS": "1"}
        return cluster.popen(host, argv, env=env, cwd=root / "code", stdout=log, stderr=log)

    return {"ours": (ours, CONTROL_PORT), "torchrun": (torchrun, port)}


# --- sections ---------------------------------------------------------------------------------


def teardown(cluster: Cluster, rounds: int, cap: float) -> dict[str, object]:
    results: dict[str, list[float]] = {"ours": [], "torchrun": []}
    hung: dict[str, int] = {"ours": 0, "torchrun": 0}
    exited: dict[str, list[list[str]]] = {"ours": [], "torchrun": []}  # in rounds that hung
    orphans: dict[str, int] = {"ours": 0, "torchrun": 0}
    for r in range(rounds):
        order = ["ours", "torchrun"] if r % 2 == 0 else ["torchrun", "ours"]
        for who in order:
            root = Path(tempfile.mkdtemp(prefix=f"td-{who}-", dir=cluster.workdir))
            shared = root / "shared"
            shared.mkdir()
            hps = {"mode": "fail", "fail-host": "algo-2", "dir": str(shared)}
            start, _ = starters(cluster, root, 3, hps, port=29400 + r, run_id=f"td{r}")[who]
            procs = {h.name: start(h, i) for i, h in enumerate(cluster.hosts[:3])}
            exits = watch_exits(procs)
            if not poll_until((shared / "fail").exists, 60, poll_s=0.005):
                raise RuntimeError(f"{who}: the failing rank never ran; see {root}")
            stamp = float((shared / "fail").read_text())
            if wait_all(exits, 3, cap):
                results[who].append(max(exits.values()) - stamp)
            else:
                hung[who] += 1
                exited[who].append(sorted(exits))
            orphans[who] += kill_everything(cluster)
        print(
            f"  teardown round {r + 1}: " + ", ".join(f"{k} {v[-1:]}" for k, v in results.items())
        )
    out = summarise(results, hung, orphans, cap)
    out["launchers_exited_in_rounds_that_hung"] = exited
    return out


def start_time(cluster: Cluster, rounds: int) -> dict[str, object]:
    results: dict[str, list[float]] = {"ours": [], "torchrun": []}
    totals: dict[str, list[float]] = {"ours": [], "torchrun": []}
    orphans: dict[str, int] = {"ours": 0, "torchrun": 0}
    after_join: list[float] = []
    h1, h2 = cluster.hosts[:2]
    for r in range(rounds):
        order = ["ours", "torchrun"] if r % 2 == 0 else ["torchrun", "ours"]
        for who in order:
            root = Path(tempfile.mkdtemp(prefix=f"st-{who}-", dir=cluster.workdir))
            shared = root / "shared"
            shared.mkdir()
            hps = {"mode": "noop", "dir": str(shared)}
            start, port = starters(cluster, root, 2, hps, port=29500 + r, run_id=f"st{r}")[who]
            began = time.monotonic()
            first = start(h1, 0)
            wait_listening(cluster, h1, port)
            t0 = time.monotonic()
            last = start(h2, 1)
            exits = watch_exits({"h1": first, "h2": last})
            if not wait_all(exits, 2, 60) or first.returncode or last.returncode:
                raise RuntimeError(f"{who} failed (rc {first.returncode}, {last.returncode})")
            stamps = [float(p.read_text()) for p in shared.glob("start-*")]
            assert len(stamps) == 2, stamps
            results[who].append(max(stamps) - t0)
            totals[who].append(max(exits.values()) - began)
            if who == "ours":  # when the leader saw the last host's HELLO (its log line)
                joined = stamp_of(root / f"ours-{h1.name}.log", f"host {h2.name} joined")
                assert joined is not None, (root / f"ours-{h1.name}.log").read_text()
                after_join.append(max(stamps) - joined)
            orphans[who] += kill_everything(cluster)
        print(
            f"  start round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in results.items())
        )
    out = summarise(results, {}, orphans, 0)
    out["total_median_s"] = {k: median(v) for k, v in totals.items()}
    out["ours_last_hello_to_all_running_median_s"] = median(after_join)
    out["ours_last_hello_to_all_running_all_s"] = after_join
    return out


PLAN_LINE = re.compile(
    r"plan sent to (\d+) hosts ([\d.]+) s after leading; rendezvous CPU ([\d.]+) ms "
    r"\(([\d.]+) ms/host\)"
)


@dataclass(frozen=True, slots=True)
class ScaleRow:
    """The scale section's figures for one H (the JSON keys of the results file)."""

    ours_wall_s: float
    ours_wall_runs_s: list[float]
    leader_cpu_ms_per_host: float
    leader_cpu_runs_ms: list[float]
    leader_rendezvous_wall_s: float
    torchrun_wall_s: float | None = None  # only for H in --torchrun-hosts

    def as_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def scale(hosts: list[int], torchrun_hosts: list[int], rounds: int) -> dict[int, ScaleRow]:
    rows: dict[int, ScaleRow] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "prog.py").write_text(PROGRAM)
        shared = Path(tmp) / "shared"
        shared.mkdir()
        for h in hosts:
            walls, cpu, rdzv = [], [], []
            for _ in range(rounds):
                argv = [LAUNCHER, "local", "--hosts", str(h), "--nproc-per-host", "1"]
                argv += ["--job-dir", f"{tmp}/jobs", str(code / "prog.py")]
                argv += ["--mode", "noop", "--dir", str(shared)]
                t = time.monotonic()
                proc = subprocess.run(
                    argv, capture_output=True, text=True, timeout=300, check=False
                )
                walls.append(time.monotonic() - t)
                if proc.returncode != 0:
                    raise RuntimeError(f"launcher local --hosts {h} failed:\n{proc.stderr[-3000:]}")
                m = PLAN_LINE.search(proc.stderr)
                assert m and int(m[1]) == h, proc.stderr[-2000:]
                rdzv.append(float(m[2]))
                cpu.append(float(m[4]))
                subprocess.run(["rm", "-rf", f"{tmp}/jobs"], check=True)
            torchrun_wall = None
            if h in torchrun_hosts:
                torchrun_wall = median(
                    [torchrun_local(h, code, shared, 29600 + r) for r in range(rounds)]
                )
            row = rows[h] = ScaleRow(
                ours_wall_s=median(walls),
                ours_wall_runs_s=walls,
                leader_cpu_ms_per_host=median(cpu),
                leader_cpu_runs_ms=cpu,
                leader_rendezvous_wall_s=median(rdzv),
                torchrun_wall_s=torchrun_wall,
            )
            shown = {k: v for k, v in row.as_json().items() if "_runs_" not in k}
            print(f"  scale H={h}: {json.dumps(shown)}")
    return rows


def torchrun_local(h: int, code: Path, shared: Path, port: int) -> float:
    """H torchrun agents on this machine, c10d on loopback, one no-op worker each."""
    hps = {"mode": "noop", "dir": str(shared)}
    argv = torchrun_argv(h, f"127.0.0.1:{port}", f"scale{port}", hps)
    t = time.monotonic()
    procs = [
        subprocess.Popen(argv, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(h)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    if any(codes):
        raise RuntimeError(f"torchrun x{h} failed: {codes}")
    return time.monotonic() - t


def summarise(
    results: dict[str, list[float]], hung: dict[str, int], orphans: dict[str, int], cap: float
) -> dict[str, object]:
    out: dict[str, object] = {
        "median_s": {k: median(v) for k, v in results.items()},
        "all_s": results,
        "orphans": orphans,
    }
    if hung:
        out["did_not_finish_within_cap"] = hung
        out["cap_s"] = cap
    ours, peer = median(results["ours"]), median(results["torchrun"])
    out["ratio_ours_to_torchrun"] = ours / peer if results["torchrun"] and peer > 0 else None
    return out


# --- the plot ---------------------------------------------------------------------------------


def plot_scale(rows: dict[int, ScaleRow], path: Path, caption: str = "") -> None:
    """Two panels against H: total wall time (ours, torchrun where it ran) and the leader's
    rendezvous CPU per host, each with its goal (docs/benchmarks-multihost.md)."""
    ours = Series(
        "launcher local --hosts H", {h: r.ours_wall_s for h, r in rows.items()}, "#1f77b4"
    )
    wall = [ours]
    torchrun = {h: r.torchrun_wall_s for h, r in rows.items() if r.torchrun_wall_s is not None}
    if torchrun:
        wall.append(Series("torchrun, H c10d agents", torchrun, "#ff7f0e"))
    cpu = Series(
        "leader CPU / H", {h: r.leader_cpu_ms_per_host for h, r in rows.items()}, "#2ca02c"
    )
    figures = [
        Panel("Total wall time, one no-op rank per host", "s", wall, 5.0, "goal at H=64: 5 s"),
        Panel("Leader rendezvous CPU per host", "ms per host", [cpu], 1.0, "goal: 1 ms/host"),
    ]
    panels(path, figures, xlabel="hosts H (log scale)", caption=caption)


# --- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    byte_compile()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="teardown,start,scale")
    parser.add_argument("--rounds", type=int, default=5, help="rounds for teardown and start")
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument("--hosts", default="2,8,32,64", help="H values for scale")
    parser.add_argument("--torchrun-hosts", default="2,8", help="H values torchrun also runs")
    parser.add_argument("--cap", type=float, default=30.0, help="teardown cap per round (s)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--svg", type=Path, help="plot the scale section here")
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    machine: dict[str, object] = {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}
    results: dict[str, object] = {"machine": machine}
    if only & {"teardown", "start"}:
        if os.geteuid() != 0:
            print("teardown and start need root (network namespaces)", file=sys.stderr)
            return 2
        with Cluster.create(3) as cluster:
            if "teardown" in only:
                print("teardown: 3 hosts, a rank on algo-2 exits 1")
                results["teardown"] = teardown(cluster, args.rounds, args.cap)
            if "start" in only:
                print("start: 2 hosts, last host up -> all ranks running")
                results["start"] = start_time(cluster, args.rounds)
    if "scale" in only:
        print("scale: launcher local --hosts H, one no-op rank per host")
        hosts = [int(h) for h in args.hosts.split(",")]
        peers = [int(h) for h in args.torchrun_hosts.split(",") if h]
        rows = scale(hosts, peers, args.scale_rounds)
        results["scale"] = {str(h): row.as_json() for h, row in rows.items()}
        if args.svg:
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            caption = (
                f"median of {args.scale_rounds} runs on {os.cpu_count()} shared cores; "
                f"load average at the end {load}"
            )
            plot_scale(rows, args.svg, caption)
    machine["loadavg_at_end"] = os.getloadavg()
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
