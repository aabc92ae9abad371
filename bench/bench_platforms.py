"""Platforms: the same ranks everywhere, and a 3-node Slurm job's start-up against torchrun.

    .venv/bin/python -m bench.bench_platforms [--rounds 5] [--json out.json]

Both parts run on a real Slurm (tests/multihost/slurm.py: slurmctld and munge on one namespace
host, slurmd on three, each with its own hostname), started once.

1. **Identical ranks** (issue 17): a 2-host x 2-rank job of tests/bin/rank_tuple.py under
   SageMaker (`train` with a tree per host), Slurm one launcher per node
   (`srun --ntasks-per-node=1 launcher run --nproc-per-host 2`), Slurm one task per GPU
   (`srun --ntasks-per-node=2 launcher run`), and, emulated per pod on the same namespace hosts,
   PyTorchJob, Trainer v2, Indexed Job and JobSet. Each prints every rank's (rank, local rank,
   world size, node rank, master host) tuple; the table says whether all are identical.
2. **Start-up** of a 3-node job of a no-op rank (tests/bin/ok.py), one rank per node, under the
   same `srun --nodes=3 --ntasks-per-node=1`: `launcher run` against `torchrun --nnodes 3
   --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint node1:29400`, interleaved, `--rounds`
   each; the wall time of the whole srun, median, and the ratio.

The machine is whatever runs this; docs/benchmarks-platforms.md names the one its figures came
from.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import ROOT, VENV_BIN, byte_compile, median
from tests.helpers.trees import cluster_resources, encode_hps, write_tree
from tests.multihost.cluster import Cluster
from tests.multihost.platform_envs import NAMES, add_names, pod_env
from tests.multihost.slurm import SlurmCluster

LAUNCHER = str(VENV_BIN / "launcher")
TRAIN = str(VENV_BIN / "train")
TORCHRUN = str(VENV_BIN / "torchrun")
RANK = str(ROOT / "tests" / "bin" / "rank_tuple.py")
OK = str(ROOT / "tests" / "bin" / "ok.py")
HOSTS = ("slurmctl", "node1", "node2", "node3")
Row = tuple[object, ...]


def _rows(outputs: list[str], address_of: dict[str, str]) -> list[Row]:
    rows = []
    for out in outputs:
        for line in re.findall(r"TUPLE (\{.*\})", out):
            t = json.loads(line)
            master = address_of.get(t["master"], t["master"])
            rows.append((t["rank"], t["local_rank"], t["world_size"], t["node_rank"], master))
    return sorted(rows)


def _pods(
    slurm: SlurmCluster, argv_env: Callable[[int], tuple[list[str], dict[str, str]]]
) -> list[str]:
    """One process on node1 and node2 each (a pod per node); their stdout."""
    cluster = slurm.cluster
    nodes = slurm.nodes[:2]
    procs = []
    for i, node in enumerate(nodes):
        argv, env = argv_env(i)
        procs.append(
            cluster.popen(node, argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        )
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(err.decode(errors="replace")[-2000:])
        outs.append(out.decode(errors="replace"))
    return outs


def identical_ranks(slurm: SlurmCluster, work: Path) -> dict[str, list[Row]]:
    node1, node2 = slurm.nodes[:2]
    add_names(slurm.cluster, {node1: "algo-1", node2: "algo-2"})
    for names in NAMES.values():
        add_names(slurm.cluster, {node1: names[0], node2: names[1]})
    # The master as the name of the host it is: the leader's address, or a name of node1.
    address_of = {node1.address: "host 1", node2.address: "host 2", "node1": "host 1"}
    address_of.update({names[0]: "host 1" for names in NAMES.values()})
    base = {"LAUNCHER_PROCS_PER_HOST": "2", "LAUNCHER_JOB_TOKEN": "bench"}
    results: dict[str, list[Row]] = {}
    trees = [
        write_tree(
            work / f"algo-{i}", f"algo-{i}", ["algo-1", "algo-2"],
            encode_hps({"sagemaker_torch_distributed_enabled": True}), Path(RANK),
            resources=cluster_resources(["algo-1", "algo-2"]),
        )
        for i in (1, 2)
    ]  # fmt: skip
    results["SageMaker (train)"] = _rows(
        _pods(slurm, lambda i: ([TRAIN], {**base, "SAGEMAKER_BASE_DIR": str(trees[i])})),
        address_of,
    )
    srun = ["srun", "--nodes=2", f"--nodelist={node1.name},{node2.name}"]
    per_node = slurm.run(
        [*srun, "--ntasks-per-node=1", LAUNCHER, "run", "--nproc-per-host", "2", RANK],
        timeout=120,
        env={"LAUNCHER_JOB_TOKEN": "bench"},
    )
    results["Slurm, one launcher per node"] = _rows([per_node.stdout], address_of)
    per_task = slurm.run([*srun, "--ntasks-per-node=2", LAUNCHER, "run", RANK], timeout=120)
    results["Slurm, one task per GPU (shim)"] = _rows([per_task.stdout], address_of)
    labels = {
        "kubeflow": "PyTorchJob",
        "trainer-v2": "Trainer v2 (PET_MASTER_ADDR)",
        "indexed-job": "Indexed Job",
        "jobset": "JobSet",
    }
    for platform, label in labels.items():

        def pod(i: int, platform: str = platform) -> tuple[list[str], dict[str, str]]:
            return [LAUNCHER, "run", RANK], {**base, **pod_env(platform, i)}

        results[label] = _rows(_pods(slurm, pod), address_of)
    return results


def startup(slurm: SlurmCluster, rounds: int) -> dict[str, list[float]]:
    srun = ["srun", "--nodes=3", "--ntasks-per-node=1"]
    ours = [*srun, LAUNCHER, "run", "--nproc-per-host", "1", OK]
    times: dict[str, list[float]] = {"launcher run": [], "torchrun (c10d)": []}
    for r in range(rounds):
        theirs = [
            *srun, TORCHRUN, "--nnodes", "3", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
            "--rdzv-endpoint", "node1:29400", "--rdzv-id", f"bench-{r}", OK,
        ]  # fmt: skip
        for name, argv in (("launcher run", ours), ("torchrun (c10d)", theirs)):
            began = time.monotonic()
            done = slurm.run(argv, timeout=300, env={"LAUNCHER_JOB_TOKEN": "bench"})
            took = time.monotonic() - began
            if done.returncode != 0:
                raise RuntimeError(f"{name}: {done.stderr[-2000:]}")
            times[name].append(took)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    byte_compile()
    with Cluster.create(len(HOSTS), HOSTS) as cluster:
        slurm = SlurmCluster.start(cluster)
        ranks = identical_ranks(slurm, cluster.workdir)
        times = startup(slurm, args.rounds)
    reference = next(iter(ranks.values()))
    print("| platform | (rank, local rank, world size, node rank, master) | same as SageMaker |")
    print("|---|---|---|")
    for label, rows in ranks.items():
        text = " ".join(f"({a},{b},{c},{d},{e})" for a, b, c, d, e in rows)
        print(f"| {label} | {text} | {'yes' if rows == reference else 'NO'} |")
    ours, theirs = median(times["launcher run"]), median(times["torchrun (c10d)"])
    print()
    print(f"3-node Slurm start-up, median of {args.rounds} (wall time of the whole srun):")
    print(f"  launcher run     {ours:.2f} s  {[round(t, 2) for t in times['launcher run']]}")
    print(f"  torchrun (c10d)  {theirs:.2f} s  {[round(t, 2) for t in times['torchrun (c10d)']]}")
    print(f"  ratio ours / torchrun: {ours / theirs:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"ranks": ranks, "startup": times}, indent=2))
    return 0 if all(rows == reference for rows in ranks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
