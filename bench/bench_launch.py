"""Launch, teardown, memory and `train` overhead of our launcher against its peers.

Every figure is measured with the peers side by side in the same run: each round runs every
contender once, in an order that rotates from round to round, so that load from other users of
a shared machine falls on all of them alike. Medians over the rounds are reported, with ratios.

    .venv/bin/python -m bench.bench_launch                      # everything, 10 rounds
    .venv/bin/python -m bench.bench_launch --only launch,teardown --rounds 15 --sizes 2,4,8

Sections (`--only`):

* `launch`: wall time of a no-op job of N ranks: `launcher run --nproc-per-host N noop.py`,
  `torchrun --nproc-per-node N noop.py` (static rendezvous on a free port) and
  `mpirun --allow-run-as-root --oversubscribe -np N python noop.py`; plus N plain `python
  noop.py` started at once, the floor.
* `teardown`: the last rank exits 3 once every rank is up, after writing `time.monotonic()`
  (system-wide, so comparable across processes); the others sleep. Teardown = from that stamp
  to the moment the launcher has exited *and* every rank is gone (a zombie counts as gone).
  Ranks still alive after the launcher's exit are counted as orphans, then killed.
* `rss`: peak RSS (VmHWM of the launcher's own pid, read from /proc every 2 ms) while N ranks
  print 10,000 lines each and sleep 0.3 s; ours against torchrun's agent process.
* `train`: one process, SageMaker's `train` on a no-op entry point: ours, the toolkit
  (sagemaker-training 5.1.4 in `.cache/oracle-venv`, else `.cache/bench-sm-venv`, built on
  first use), and `python noop.py` run directly; overhead = median - median(direct).

The machine is whatever runs this; the figures in docs/benchmarks-launch.md name theirs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.common import ROOT, VENV_BIN, byte_compile, free_port, rotate
from tests.helpers.trees import write_tree

PYTHON = str(VENV_BIN / "python")
TOOLKIT = "sagemaker-training==5.1.4"

FAIL_SCRIPT = """
import os, signal, sys, time
rank = int(os.environ.get("RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or 0)
size = int(os.environ.get("WORLD_SIZE") or os.environ.get("OMPI_COMM_WORLD_SIZE") or 1)
folder = os.environ["BENCH_DIR"]
with open(os.path.join(folder, f"pid-{rank}.tmp"), "w") as f:
    f.write(str(os.getpid()))
os.replace(os.path.join(folder, f"pid-{rank}.tmp"), os.path.join(folder, f"pid-{rank}"))
if rank != size - 1:
    while True:
        signal.pause()
while len([n for n in os.listdir(folder) if n.startswith("pid-") and "." not in n]) < size:
    time.sleep(0.001)
with open(os.path.join(folder, "stamp"), "w") as f:
    f.write(repr(time.monotonic()))
sys.exit(3)
"""

PRINT_SCRIPT = """
import sys, time
sys.stdout.write("".join(f"line {i} of a rank that talks a lot\\n" for i in range(10000)))
sys.stdout.flush()
time.sleep(0.3)
"""


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LAUNCHER_", "SM_"))}
    env.update(OMP_NUM_THREADS="1", **extra)  # torchrun would print a banner otherwise
    return env


def contenders(n: int, script: Path) -> dict[str, Callable[[], list[str]]]:
    """argv factories (torchrun needs a fresh port each time)."""
    return {
        "ours": lambda: [
            str(VENV_BIN / "launcher"),
            "run",
            "--nproc-per-host",
            str(n),
            str(script),
        ],
        "torchrun": lambda: [
            str(VENV_BIN / "torchrun"),
            "--nproc-per-node",
            str(n),
            "--master-port",
            str(free_port()),
            str(script),
        ],
        "mpirun": lambda: [
            "mpirun",
            "--allow-run-as-root",
            "--oversubscribe",
            "-np",
            str(n),
            PYTHON,
            str(script),
        ],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds of the whole process tree, exit code) of one run.

    CPU time (user + system of the process and every descendant it waited for, from wait4)
    barely moves with the load of a shared machine, where wall time does.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def summary(
    samples: dict[str, list[float]], cpu: dict[str, list[float]] | None = None
) -> dict[str, dict[str, float]]:
    stats = {
        name: {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}
        for name, v in samples.items()
    }
    for name, v in (cpu or {}).items():
        stats[name]["cpu_median"] = statistics.median(v)
    return stats


def print_table(title: str, stats: dict[str, dict[str, float]], unit: str) -> None:
    with_cpu = all("cpu_median" in s for s in stats.values())
    print(f"\n{title}")
    extra = " median CPU s |" if with_cpu else ""
    print(f"| contender | median {unit} | min | max |{extra} runs |")
    print("|---|---|---|---|---|" + ("---|" if with_cpu else ""))
    for name, s in stats.items():
        cells = " | ".join(f"{s[k]:.3f}" for k in ("median", "min", "max"))
        cpu = f" {s['cpu_median']:.3f} |" if with_cpu else ""
        print(f"| {name} | {cells} |{cpu} {int(s['n'])} |")


def bench_launch(rounds: int, sizes: Sequence[int], work: Path) -> dict[str, object]:
    noop = work / "noop.py"
    noop.write_text("")
    results: dict[str, object] = {}
    for n in sizes:
        runs = contenders(n, noop)
        samples: dict[str, list[float]] = {name: [] for name in [*runs, "direct"]}
        cpu: dict[str, list[float]] = {name: [] for name in samples}
        for r in range(rounds):
            for name in rotate(list(samples), r):
                if name == "direct":  # N interpreters at once, nothing else
                    start = time.perf_counter()
                    procs = [subprocess.Popen([PYTHON, str(noop)]) for _ in range(n)]
                    waited = [os.wait4(p.pid, 0) for p in procs]
                    samples[name].append(time.perf_counter() - start)
                    cpu[name].append(sum(u.ru_utime + u.ru_stime for _, _, u in waited))
                    codes = [os.waitstatus_to_exitcode(w[1]) for w in waited]
                    for p, code in zip(procs, codes, strict=True):
                        p.returncode = code
                else:
                    wall, used, code = timed(runs[name](), clean_env())
                    samples[name].append(wall)
                    cpu[name].append(used)
                    codes = [code]
                if any(codes):
                    raise SystemExit(f"{name} failed (exit {codes}) on a no-op job")
        stats = summary(samples, cpu)
        print_table(f"launch, {n} ranks (seconds)", stats, "s")
        ours = stats["ours"]["median"]
        ratios = {p: ours / stats[p]["median"] for p in ("torchrun", "mpirun")}
        print(f"ours/torchrun {ratios['torchrun']:.3f}x, ours/mpirun {ratios['mpirun']:.3f}x")
        results[str(n)] = {"stats": stats, "ratios": ratios}
    return results


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return True
    return stat[stat.rfind(b")") + 2 :][:1] in (b"Z", b"X")


def _one_teardown(argv: list[str], folder: Path) -> tuple[float, int, int]:
    """(teardown seconds, launcher exit code, ranks alive when the launcher exited)."""
    env = clean_env(BENCH_DIR=str(folder))
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    code = proc.wait(timeout=120)
    end = time.monotonic()
    pids = [int(p.read_text()) for p in folder.glob("pid-*") if "." not in p.name]
    alive = [pid for pid in pids if not _gone(pid)]
    orphans = len(alive)
    deadline = end + 60
    while alive and time.monotonic() < deadline:
        time.sleep(0.001)
        alive = [pid for pid in alive if not _gone(pid)]
        end = time.monotonic()
    for pid in alive:  # nothing may pollute the next round
        os.kill(pid, signal.SIGKILL)
    return end - float((folder / "stamp").read_text()), code, orphans


def bench_teardown(rounds: int, sizes: Sequence[int], work: Path) -> dict[str, object]:
    script = work / "fail.py"
    script.write_text(FAIL_SCRIPT)
    results: dict[str, object] = {}
    for n in sizes:
        runs = contenders(n, script)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        codes: dict[str, set[int]] = {name: set() for name in runs}
        orphans: dict[str, int] = dict.fromkeys(runs, 0)
        for r in range(rounds):
            for name in rotate(list(runs), r):
                folder = Path(tempfile.mkdtemp(dir=work, prefix=f"{name}-"))
                took, code, left = _one_teardown(runs[name](), folder)
                samples[name].append(took)
                codes[name].add(code)
                orphans[name] += left
        stats = summary(samples)
        print_table(f"failure teardown, {n} ranks (seconds)", stats, "s")
        print("exit codes: " + ", ".join(f"{k} {sorted(v)}" for k, v in codes.items()))
        print("ranks alive at the launcher's exit, all rounds: " + str(orphans))
        results[str(n)] = {
            "stats": stats,
            "exit_codes": {k: sorted(v) for k, v in codes.items()},
            "orphans": orphans,
        }
    return results


def _peak_rss(argv: list[str]) -> float:
    """VmHWM in MiB of the process `argv` starts, polled until it exits."""
    proc = subprocess.Popen(
        argv,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError, IndexError):
            pass
        time.sleep(0.002)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed (exit {proc.returncode})")
    return peak / 1024


def bench_rss(rounds: int, sizes: Sequence[int], work: Path) -> dict[str, object]:
    script = work / "talk.py"
    script.write_text(PRINT_SCRIPT)
    results: dict[str, object] = {}
    for n in sizes:
        runs = {k: v for k, v in contenders(n, script).items() if k != "mpirun"}
        samples: dict[str, list[float]] = {name: [] for name in runs}
        for r in range(rounds):
            for name in rotate(list(runs), r):
                samples[name].append(_peak_rss(runs[name]()))
        stats = summary(samples)
        print_table(f"peak RSS of the launcher process, {n} ranks (MiB)", stats, "MiB")
        results[str(n)] = {"stats": stats}
    return results


def toolkit_train() -> Path | None:
    """The toolkit's `train`: the oracle venv when it works, else our own (built once)."""
    for venv in (ROOT / ".cache" / "oracle-venv", ROOT / ".cache" / "bench-sm-venv"):
        probe = [str(venv / "bin" / "python"), "-c", "import sagemaker_training.cli.train"]
        if (venv / "bin" / "train").exists():
            with tempfile.TemporaryDirectory() as base:
                env = {"PATH": "/usr/bin:/bin", "SAGEMAKER_BASE_DIR": base}
                if subprocess.run(probe, check=False, env=env, capture_output=True).returncode == 0:
                    return venv / "bin" / "train"
    venv = ROOT / ".cache" / "bench-sm-venv"
    print(f"building {venv} with {TOOLKIT} (once)...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", TOOLKIT]
    if subprocess.run(pip, check=False).returncode != 0:
        print(f"cannot install {TOOLKIT}: the toolkit column is skipped", file=sys.stderr)
        return None
    return venv / "bin" / "train"


def bench_train(rounds: int, work: Path) -> dict[str, object]:
    base = write_tree(
        work / "opt-ml", "algo-1", ["algo-1"], {}, "", entry="noop.py", channels={"train": {}}
    )
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(work),
        "LANG": "C.UTF-8",
        "SAGEMAKER_BASE_DIR": str(base),
        "SM_STUDIO_LOCAL_MODE": "true",  # the toolkit would wait for the DNS of algo-1
    }
    runs = {"ours": [str(VENV_BIN / "train")], "direct": [PYTHON, str(base / "code" / "noop.py")]}
    toolkit = toolkit_train()
    if toolkit is not None:
        runs["toolkit"] = [str(toolkit)]
    samples: dict[str, list[float]] = {name: [] for name in runs}
    cpu: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        for name in rotate(list(runs), r):
            wall, used, code = timed(runs[name], env)
            samples[name].append(wall)
            cpu[name].append(used)
            if code != 0:
                raise SystemExit(f"{name} failed (exit {code}): run {runs[name]} by hand")
    stats = summary(samples, cpu)
    print_table("train, one no-op process (seconds)", stats, "s")
    overhead = {
        k: {
            "wall": v["median"] - stats["direct"]["median"],
            "cpu": v["cpu_median"] - stats["direct"]["cpu_median"],
        }
        for k, v in stats.items()
        if k != "direct"
    }
    for k, v in overhead.items():
        print(f"overhead of {k} over direct: wall {v['wall']:.3f} s, CPU {v['cpu']:.3f} s")
    if "toolkit" in overhead:
        mine, theirs = overhead["ours"], overhead["toolkit"]
        print(
            f"ours/toolkit overhead: wall {mine['wall'] / theirs['wall']:.3f},"
            f" CPU {mine['cpu'] / theirs['cpu']:.3f}"
        )
    return {"stats": stats, "overhead": overhead}


def main() -> None:
    byte_compile()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sizes", default="2,4,8", help="rank counts for launch")
    parser.add_argument("--teardown-sizes", default="2,4")
    parser.add_argument("--rss-sizes", default="2,8")
    parser.add_argument("--only", default="launch,teardown,rss,train")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    only = set(args.only.split(","))
    sizes = [int(s) for s in args.sizes.split(",")]
    load = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results: dict[str, object] = {"rounds": args.rounds, "load_before": load}
    with tempfile.TemporaryDirectory(prefix="bench-launch-") as tmp:
        work = Path(tmp)
        if "launch" in only:
            results["launch"] = bench_launch(args.rounds, sizes, work)
        if "teardown" in only:
            tsizes = [int(s) for s in args.teardown_sizes.split(",")]
            results["teardown"] = bench_teardown(args.rounds, tsizes, work)
        if "rss" in only:
            rsizes = [int(s) for s in args.rss_sizes.split(",")]
            results["rss"] = bench_rss(args.rounds, rsizes, work)
        if "train" in only:
            results["train"] = bench_train(args.rounds, work)
    results["load_after"] = load_after = os.getloadavg()
    print(f"load average after: {load_after[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
