"""Preflight figures (issue 16) on 3 namespace hosts, CPU and gloo.

    .venv/bin/python -m bench.bench_preflight [--rounds 3] [--json out.json]   (needs root)

In one run on one simulated cluster (tests/multihost/cluster.py: 3 network namespaces on a
bridge, each host its own launcher and SageMaker tree), each round runs, alternating which
goes first so that load from other users falls on both alike:

* **preflight**: `launcher preflight` (quick) on every host. Wall time from the start of the
  three launchers to the last exit, and the preflight's own time (`seconds` in the leader's
  preflight.json, from the checks' start to the verdict), plus the cross-host all_reduce
  busbw it measured (4 MiB, gloo, one rank per host).
* **collectives.bench**: `train` on every host running `python -m collectives.bench --backend
  gloo --ops all_reduce` at the same size, one rank per host, over the same links: its busbw.

Reported: medians over the rounds and the ratio preflight / collectives.bench of the busbw
(the issue asks for agreement within 10 %). Nothing is left running after a round.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from typing import Any

from bench.common import VENV_BIN, byte_compile, median
from launcher.preflight.probe import CROSS_BYTES
from tests.helpers.trees import cluster_resources, encode_hps, write_tree
from tests.helpers.waiting import wait_for
from tests.multihost.cluster import Cluster

LAUNCHER = str(VENV_BIN / "launcher")
TRAIN = str(VENV_BIN / "train")
SIZE = CROSS_BYTES["quick"]
BENCH_PROGRAM = f"""
import runpy, sys
sys.argv = ["collectives.bench", "--backend", "gloo", "--ops", "all_reduce", "--json",
            "--min-bytes", "{SIZE}", "--max-bytes", "{SIZE}", "--iters", "20", "--warmup", "5"]
runpy.run_module("collectives.bench", run_name="__main__")
"""
_BUSBW = re.compile(r"^\[algo-1:0\] (\{.*\"busbw\".*\})$", re.MULTILINE)


def _trees(root: Path, names: list[str], program: str) -> dict[str, Path]:
    hps = {
        "sagemaker_job_name": json.dumps(f"bench-preflight-{root.name}"),
        "sagemaker_torch_distributed_enabled": "true",
        **encode_hps({}),
    }
    return {
        name: write_tree(
            root / name,
            name,
            names,
            hps,
            program,
            entry="prog.py",
            resources=cluster_resources(names),
        )
        for name in names
    }


def _run_all(cluster: Cluster, trees: dict[str, Path], argv: list[str], logs: Path) -> float:
    """Start `argv` on every host at once; the seconds until the last one exited (all 0)."""
    logs.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    procs = {}
    for name, tree in trees.items():
        env = {"SAGEMAKER_BASE_DIR": str(tree), "LAUNCHER_PEER_TIMEOUT": "60"}
        with (logs / f"{name}.log").open("wb") as out:
            procs[name] = cluster.popen(cluster.host(name), argv, env=env, stdout=out, stderr=out)
    wait_for(lambda: all(p.poll() is not None for p in procs.values()), 180, "every launcher")
    took = time.monotonic() - began
    codes = {name: p.returncode for name, p in procs.items()}
    if any(codes.values()):
        raise RuntimeError(f"exit codes {codes}; logs in {logs}")
    return took


def preflight_round(cluster: Cluster, root: Path) -> dict[str, float]:
    names = [h.name for h in cluster.hosts]
    trees = _trees(root / "trees", names, "print('never runs')\n")
    wall = _run_all(cluster, trees, [LAUNCHER, "preflight"], root / "logs")
    report: dict[str, Any] = json.loads((trees["algo-1"] / "output" / "preflight.json").read_text())
    (cross,) = [r for r in report["rows"] if r["check"] == "allreduce.cross"]
    return {"wall_s": wall, "preflight_s": float(report["seconds"]), "busbw": cross["value"]}


def bench_round(cluster: Cluster, root: Path) -> dict[str, float]:
    names = [h.name for h in cluster.hosts]
    trees = _trees(root / "trees", names, BENCH_PROGRAM)
    wall = _run_all(cluster, trees, [TRAIN], root / "logs")
    found = _BUSBW.search((root / "logs" / "algo-1.log").read_text())
    if found is None:
        raise RuntimeError(f"no busbw line in {root / 'logs' / 'algo-1.log'}")
    return {"wall_s": wall, "busbw": float(json.loads(found[1])["busbw"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="write the raw figures here")
    args = p.parse_args(argv)
    byte_compile()
    results: dict[str, list[dict[str, float]]] = {"preflight": [], "bench": []}
    with Cluster.create(3) as cluster:
        workdir = cluster.workdir
        for r in range(args.rounds):
            order = ["preflight", "bench"] if r % 2 == 0 else ["bench", "preflight"]
            for side in order:
                root = workdir / f"{side}-{r}"
                run = preflight_round if side == "preflight" else bench_round
                results[side].append(run(cluster, root))
                print(f"round {r} {side}: {results[side][-1]}", flush=True)
    pre, ref = results["preflight"], results["bench"]
    busbw_pre = median(x["busbw"] for x in pre)
    busbw_ref = median(x["busbw"] for x in ref)
    print(
        f"\n3 namespace hosts, gloo, {SIZE >> 20} MiB all_reduce, {args.rounds} rounds (medians)\n"
    )
    print("| figure | preflight | collectives.bench | ratio |")
    print("|---|---|---|---|")
    print(
        f"| wall time of the command on 3 hosts (s) | {median(x['wall_s'] for x in pre):.2f} | "
        f"{median(x['wall_s'] for x in ref):.2f} | |"
    )
    print(
        f"| preflight's own time, checks to verdict (s) | "
        f"{median(x['preflight_s'] for x in pre):.2f} | | |"
    )
    print(
        f"| cross-host all_reduce busbw (GB/s) | {busbw_pre:.3f} | {busbw_ref:.3f} | "
        f"{busbw_pre / busbw_ref:.2f} |"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
