"""A Slurm step: the hosts, this node and its rank, the mode and the GPUs. Pure.

Variables are read step-scoped first: inside `srun`, `SLURM_STEP_NODELIST` and
`SLURM_STEP_NUM_NODES` describe the step, while the `SLURM_JOB_*` ones describe the whole
allocation (schedulers.md: job- and step-scoped variables get mixed up). The node rank is
`SLURM_NODEID`, never a position found by searching the list, and this node's name
(`SLURMD_NODENAME`) must be the one at that position of the expanded list: otherwise the hosts
would disagree on the order, and the launcher refuses instead of hanging (Lightning#17228).

Modes. `srun --ntasks-per-node=1 launcher run ...` (one task per node) is one launcher per
host: the launchers meet and start the ranks. With more tasks on a node than one, every task
is one rank and the launcher is a thin shim around it (`Platform.task`): RANK is
`SLURM_PROCID`, LOCAL_RANK `SLURM_LOCALID`, WORLD_SIZE `SLURM_NTASKS`, MASTER_ADDR the first
host, MASTER_PORT derived from the job id; the shim still supervises its rank (signals, error
file, output/failure). Ranks must be laid out by block (Slurm's default): a cyclic layout is
refused, because torch's LOCAL_RANK/GROUP_RANK assume contiguous ranks per node.

In a batch script on several nodes, outside a step, `SLURM_NODEID` reads 0 on the one node the
script runs on: the launcher refuses there, saying how to start it with srun.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from launcher.platforms import hostlist
from launcher.platforms.model import (
    Kind,
    Platform,
    PlatformError,
    Source,
    TaskRank,
    integer,
    required,
)

__all__ = ["MASTER_PORT_BASE", "detect", "is_slurm", "tasks_per_node"]

K = Kind.SLURM
# The rank-facing MASTER_PORT in one-task-per-GPU mode: every task computes it alike from the
# job and step ids, in a band between 20000 and 40000.
MASTER_PORT_BASE = 20000
_REPEAT = re.compile(r"([0-9]{1,6})(?:\(x([0-9]{1,6})\))?")
SRUN_HINT = (
    "run it in a step, one per node: srun --ntasks-per-node=1 launcher run ...;"
    " or --hosts-from static for this host alone"
)


def is_slurm(environ: Mapping[str, str]) -> bool:
    """Inside a Slurm job (a step or the batch script)."""
    return bool(environ.get("SLURM_JOB_ID"))


def tasks_per_node(text: str) -> tuple[int, ...]:
    """`SLURM_STEP_TASKS_PER_NODE` such as `2(x3),1` into one count per node. ValueError."""
    counts: list[int] = []
    for part in text.split(","):
        match = _REPEAT.fullmatch(part.strip())
        if match is None:
            raise ValueError(f"{part!r} is not N or N(xM)")
        counts.extend([int(match.group(1))] * int(match.group(2) or 1))
    return tuple(counts)


def detect(environ: Mapping[str, str]) -> Platform:
    """The `Platform` of this Slurm task. Raises `PlatformError` naming the variable."""
    job_id = required(environ, K, "SLURM_JOB_ID")
    in_step = bool(environ.get("SLURM_STEP_NUM_NODES"))
    sources: list[Source] = []
    if in_step:
        nodelist_var = "SLURM_STEP_NODELIST"
    else:
        job_nodes = integer(K, "SLURM_JOB_NUM_NODES", required(environ, K, "SLURM_JOB_NUM_NODES"))
        if job_nodes > 1:
            raise PlatformError(
                K,
                "SLURM_STEP_NUM_NODES",
                f"is not set: this is the batch script of a {job_nodes}-node job, outside srun,"
                " where SLURM_NODEID reads 0 on the one node it runs on",
                hint=SRUN_HINT,
            )
        nodelist_var = "SLURM_JOB_NODELIST"
    nodelist = required(environ, K, nodelist_var)
    try:
        hosts = hostlist.expand(nodelist)
    except hostlist.HostlistError as e:
        raise PlatformError(K, nodelist_var, str(e)) from None
    if not hosts or len(set(hosts)) != len(hosts):
        raise PlatformError(K, nodelist_var, f"must name distinct hosts: {nodelist[:80]!r}")
    if in_step:
        count = integer(K, "SLURM_STEP_NUM_NODES", environ["SLURM_STEP_NUM_NODES"], 1)
        if count != len(hosts):
            raise PlatformError(
                K,
                "SLURM_STEP_NUM_NODES",
                f"is {count} but SLURM_STEP_NODELIST names {len(hosts)} hosts",
            )
    sources.append(Source("hosts", ",".join(hosts), f"{nodelist_var} {nodelist!r} expanded"))
    current = required(environ, K, "SLURMD_NODENAME")
    node_rank = integer(K, "SLURM_NODEID", required(environ, K, "SLURM_NODEID"))
    if node_rank >= len(hosts) or hosts[node_rank] != current:
        raise PlatformError(
            K,
            "SLURM_NODEID",
            f"is {node_rank}, but {nodelist_var} puts this node ({current}) at"
            f" {hosts.index(current) if current in hosts else 'no'} position",
            hint="the node order must be the same on every node; report this Slurm set-up",
        )
    sources.append(Source("current_host", current, "SLURMD_NODENAME"))
    sources.append(Source("node_rank", str(node_rank), "SLURM_NODEID"))
    step = environ.get("SLURM_STEP_ID", "batch")
    job_name = f"slurm-{job_id}.{step}"
    sources.append(Source("job", job_name, "SLURM_JOB_ID, SLURM_STEP_ID"))
    gpus, gpu_origin = _gpus(environ)
    if gpus is not None:
        sources.append(Source("visible_gpus", gpus, gpu_origin))
    per_node = _tasks(environ, len(hosts), in_step)
    if max(per_node) <= 1:
        return Platform(K, hosts, current, node_rank, job_name, tuple(sources), None, gpus)
    task = _task(environ, per_node, node_rank, job_id)
    sources.append(Source("rank", str(task.rank), "SLURM_PROCID"))
    sources.append(Source("local_rank", str(task.local_rank), "SLURM_LOCALID"))
    sources.append(Source("world_size", str(task.world_size), "SLURM_NTASKS"))
    sources.append(Source("master_port", str(task.master_port), "SLURM_JOB_ID derived"))
    return Platform(
        K,
        hosts,
        current,
        node_rank,
        job_name,
        tuple(sources),
        per_node[node_rank],
        gpus,
        task,
        task_slots=per_node,
    )


def _gpus(environ: Mapping[str, str]) -> tuple[str | None, str]:
    """The step's GPUs: what Slurm bound to this task, else the step's, else the job's."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        if name in environ:
            return environ[name], name
    return None, ""


def _tasks(environ: Mapping[str, str], nodes: int, in_step: bool) -> tuple[int, ...]:
    """Tasks on each node of the step (one per node outside a step)."""
    if not in_step:
        return (1,) * nodes
    name = "SLURM_STEP_TASKS_PER_NODE"
    text = environ.get(name) or environ.get("SLURM_TASKS_PER_NODE", "")
    if not text:
        return (1,) * nodes
    try:
        counts = tasks_per_node(text)
    except ValueError as e:
        raise PlatformError(K, name, str(e)) from None
    if len(counts) != nodes:
        raise PlatformError(K, name, f"gives {len(counts)} nodes, the step has {nodes}")
    return counts


def _task(
    environ: Mapping[str, str], per_node: tuple[int, ...], node_rank: int, job_id: str
) -> TaskRank:
    """This task's rank in one-task-per-GPU mode; block layout checked."""
    rank = integer(K, "SLURM_PROCID", required(environ, K, "SLURM_PROCID"))
    local = integer(K, "SLURM_LOCALID", required(environ, K, "SLURM_LOCALID"))
    world = integer(K, "SLURM_NTASKS", required(environ, K, "SLURM_NTASKS"), 1)
    if world != sum(per_node):
        raise PlatformError(K, "SLURM_NTASKS", f"is {world}, the nodes hold {sum(per_node)}")
    if local >= per_node[node_rank] or rank != sum(per_node[:node_rank]) + local:
        raise PlatformError(
            K,
            "SLURM_PROCID",
            f"is {rank} for local task {local} of node {node_rank}: the tasks are not laid out"
            " by block",
            hint="start the step with --distribution=block (Slurm's default)",
        )
    # The step id too: two steps of one job may run at once (`srun ... &`).
    digits = "".join(c for c in job_id if c.isdigit()) or "0"
    step = environ.get("SLURM_STEP_ID", "0")
    step_id = int(step) if step.isascii() and step.isdigit() and len(step) < 10 else 0
    port = MASTER_PORT_BASE + (int(digits[-9:]) * 31 + step_id) % 20000
    return TaskRank(rank, local, world, port)
