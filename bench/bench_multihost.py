"""Multi-host figures (issue 4): failure teardown, start of a 2-host job, and scale.

    .venv/bin/python bench/bench_multihost.py                       # everything (needs root)
    .venv/bin/python bench/bench_multihost.py --only scale --hosts 2,8,32,64 --rounds 3
    .venv/bin/python bench/bench_multihost.py --json out.json --svg docs/multihost-scale.svg

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
* `scale`: `launcher local --hosts H --procs-per-host 1` with a no-op rank (no torch) for each
  H: total wall time, and the leader's own rendezvous cost from its log line "plan sent to H
  hosts ... rendezvous CPU X ms (Y ms/host)": the leader process's CPU time from listening to
  the plan sent. torchrun with H local c10d agents is run for `--torchrun-hosts` as reference.

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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import byte_compile

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.multihost.cluster import Cluster, Host, netns_key, pids_in_netns  # noqa: E402
from tests.multihost.test_multihost import write_tree  # noqa: E402

VENV = REPO / ".venv" / "bin"
PYTHON = str(VENV / "python")
TRAIN = str(VENV / "train")
TORCHRUN = str(VENV / "torchrun")
LAUNCHER = str(VENV / "launcher")
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


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def kill_everything(cluster: Cluster, timeout: float = 5.0) -> int:
    """Wait for the namespaces to empty; kill and count what is left (orphans)."""
    keys = {k for h in cluster.hosts if (k := netns_key(h.netns))}
    deadline = time.monotonic() + timeout
    while (left := pids_in_netns(keys)) and time.monotonic() < deadline:
        time.sleep(0.02)
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
    deadline = time.monotonic() + timeout
    while not listening(cluster, host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on {host.name}:{port} after {timeout} s")
        time.sleep(0.02)


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
    deadline = time.monotonic() + timeout
    while len(exits) < n and time.monotonic() < deadline:
        time.sleep(0.005)
    return len(exits) == n


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

    def ours(host: Host, i: int) -> subprocess.Popen[bytes]:
        tree = write_tree(root / "trees", host.name, names, hps, PROGRAM)
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
            deadline = time.monotonic() + 60
            while not (shared / "fail").exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            if not (shared / "fail").exists():
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


def scale(hosts: list[int], torchrun_hosts: list[int], rounds: int) -> dict[str, object]:
    rows: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "prog.py").write_text(PROGRAM)
        shared = Path(tmp) / "shared"
        shared.mkdir()
        for h in hosts:
            walls, cpu, rdzv = [], [], []
            for _ in range(rounds):
                argv = [LAUNCHER, "local", "--hosts", str(h), "--procs-per-host", "1"]
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
            row: dict[str, object] = {
                "ours_wall_s": median(walls),
                "ours_wall_runs_s": walls,
                "leader_cpu_ms_per_host": median(cpu),
                "leader_cpu_runs_ms": cpu,
                "leader_rendezvous_wall_s": median(rdzv),
            }
            if h in torchrun_hosts:
                row["torchrun_wall_s"] = median(
                    [torchrun_local(h, code, shared, 29600 + r) for r in range(rounds)]
                )
            rows[str(h)] = row
            shown = {k: v for k, v in row.items() if "_runs_" not in k}
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


def nice_step(raw: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= raw (axis ticks at round numbers)."""
    import math

    exp = math.floor(math.log10(raw)) if raw > 0 else 0
    for m in (1, 2, 2.5, 5, 10):
        if m * 10**exp >= raw:
            return float(m * 10**exp)
    return float(10 ** (exp + 1))


def svg(rows: dict[str, dict[str, float]], path: Path, caption: str = "") -> None:
    """Two panels, drawn by hand: total wall time, and the leader's CPU per host, against H."""
    hs = sorted(int(h) for h in rows)
    width, height, pad = 820, 360, 60
    panel = (width - 3 * pad) / 2

    def x_of(h: int, left: float) -> float:
        import math

        lo, hi = math.log2(hs[0]), math.log2(hs[-1])
        return left + (math.log2(h) - lo) / ((hi - lo) or 1) * panel

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
    ]

    def draw(
        left: float,
        title: str,
        series: list[tuple[str, str, dict[int, float]]],
        goal: tuple[float, str] | None,
        unit: str,
    ) -> None:
        top, bottom = 40.0, height - 70.0
        values = [v for _, _, s in series for v in s.values()] + ([goal[0]] if goal else [])
        step = nice_step(max(values) * 1.1 / 4)
        ymax = step * 4

        def y_of(v: float) -> float:
            return bottom - v / ymax * (bottom - top)

        parts.append(
            f'<text x="{left + panel / 2}" y="22" text-anchor="middle" '
            f'font-weight="bold">{title}</text>'
        )
        parts.append(
            f'<line x1="{left}" y1="{bottom}" x2="{left + panel}" y2="{bottom}" stroke="black"/>'
        )
        parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{bottom}" stroke="black"/>')
        for h in hs:
            x = x_of(h, left)
            parts.append(
                f'<line x1="{x}" y1="{bottom}" x2="{x}" y2="{bottom + 5}" stroke="black"/>'
            )
            parts.append(f'<text x="{x}" y="{bottom + 18}" text-anchor="middle">{h}</text>')
        parts.append(
            f'<text x="{left + panel / 2}" y="{bottom + 36}" text-anchor="middle">'
            "hosts H (log scale)</text>"
        )
        for i in range(5):
            v = step * i
            y = y_of(v)
            parts.append(f'<line x1="{left - 4}" y1="{y}" x2="{left}" y2="{y}" stroke="black"/>')
            parts.append(f'<text x="{left - 7}" y="{y + 4}" text-anchor="end">{v:.3g}</text>')
        parts.append(
            f'<text x="{left - 45}" y="{(top + bottom) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 {left - 45} {(top + bottom) / 2})">{unit}</text>'
        )
        if goal:
            y = y_of(goal[0])
            parts.append(
                f'<line x1="{left}" y1="{y}" x2="{left + panel}" y2="{y}" '
                'stroke="#c00" stroke-dasharray="5,4"/>'
            )
            parts.append(
                f'<text x="{left + panel - 4}" y="{y - 5}" text-anchor="end" '
                f'fill="#c00">{goal[1]}</text>'
            )
        for n, (label, colour, s) in enumerate(series):
            points = " ".join(f"{x_of(h, left):.1f},{y_of(v):.1f}" for h, v in sorted(s.items()))
            parts.append(
                f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>'
            )
            for h, v in s.items():
                parts.append(
                    f'<circle cx="{x_of(h, left):.1f}" cy="{y_of(v):.1f}" r="3.5" '
                    f'fill="{colour}"><title>H={h}: {v:.3g} {unit}</title></circle>'
                )
            parts.append(
                f'<rect x="{left + 10}" y="{top + 4 + 16 * n}" width="12" height="3" '
                f'fill="{colour}"/>'
            )
            parts.append(f'<text x="{left + 28}" y="{top + 9 + 16 * n}">{label}</text>')

    ours_wall = {int(h): float(r["ours_wall_s"]) for h, r in rows.items()}
    torch_wall = {
        int(h): float(r["torchrun_wall_s"]) for h, r in rows.items() if "torchrun_wall_s" in r
    }
    cpu = {int(h): float(r["leader_cpu_ms_per_host"]) for h, r in rows.items()}
    series = [("launcher local --hosts H", "#1f77b4", ours_wall)]
    if torch_wall:
        series.append(("torchrun, H c10d agents", "#ff7f0e", torch_wall))
    draw(pad, "Total wall time, one no-op rank per host", series, (5.0, "goal at H=64: 5 s"), "s")
    draw(
        2 * pad + panel,
        "Leader rendezvous CPU per host",
        [("leader CPU / H", "#2ca02c", cpu)],
        (1.0, "goal: 1 ms/host"),
        "ms per host",
    )
    if caption:
        parts.append(
            f'<text x="{width / 2}" y="{height - 4}" text-anchor="middle" font-size="11" '
            f'fill="#555">{caption}</text>'
        )
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


# --- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
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
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
    }
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
        results["scale"] = rows
        if args.svg:
            load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
            caption = (
                f"median of {args.scale_rounds} runs on {os.cpu_count()} shared cores; "
                f"load average at the end {load}"
            )
            svg(rows, args.svg, caption)  # type: ignore[arg-type]
    results["machine"]["loadavg_at_end"] = os.getloadavg()  # type: ignore[index]
    text = json.dumps(results, indent=1, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
