"""The launch plan: who runs what, with which environment. Pure: no I/O, no clock, no environ.

`build(job, world, base_env)` turns a backend-neutral `JobSpec` and the agreed `World` into one
`RankSpec` per local rank. Global ranks are contiguous per host in node order, so hosts may have
different slot counts. `--dry-run` prints `describe(plan)`, which masks hyperparameter values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from launcher import contract
from launcher.settings import Backend

# `Backend` is a setting and lives in `settings`; it stays importable from here.
__all__ = [
    "CONTROL_SECRETS",
    "MASK",
    "SECRET_PREFIXES",
    "SECRET_VARS",
    "Backend",
    "HostSlots",
    "JobSpec",
    "LaunchPlan",
    "RankSpec",
    "World",
    "build",
    "describe",
    "masked",
    "without_secrets",
]

# Variables whose values carry hyperparameters (which may hold secrets): masked when shown.
SECRET_VARS = ("SM_HPS", "SM_USER_ARGS", "SM_TRAINING_ENV", "SM_FRAMEWORK_PARAMS")
SECRET_PREFIXES = ("SM_HP_",)
MASK = "***"


@dataclass(frozen=True, slots=True)
class HostSlots:
    """One host of the world, in node order. `addr` is how ranks elsewhere reach it."""

    name: str
    slots: int
    addr: str = ""


@dataclass(frozen=True, slots=True)
class World:
    """The job-wide layout every host agrees on (from the rendezvous, or trivial on one host)."""

    hosts: tuple[HostSlots, ...]
    node_rank: int
    master_addr: str
    master_port: int
    run_id: str = "none"
    horovod_rendezvous: tuple[str, int] | None = None

    @property
    def world_size(self) -> int:
        return sum(h.slots for h in self.hosts)

    @property
    def host(self) -> HostSlots:
        return self.hosts[self.node_rank]

    @property
    def base_rank(self) -> int:
        return sum(h.slots for h in self.hosts[: self.node_rank])


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What to run, independent of where it came from (SageMaker tree or command line)."""

    command: tuple[str, ...]  # argv, user arguments included
    cwd: str
    backend: Backend
    env: Mapping[str, str] = field(default_factory=dict)  # shared by every rank (SM_* ...)
    user_args: int = 0  # how many trailing argv elements are hyperparameter values
    error_dir: str = ""  # where per-rank error files go ("" disables them)
    interface: str = ""  # NCCL/GLOO socket interface, when the job names one
    max_restarts: int = 0
    restart_count: int = 0  # the attempt these ranks belong to (0: the first)


@dataclass(frozen=True, slots=True)
class RankSpec:
    rank: int
    local_rank: int
    host: str
    argv: tuple[str, ...]
    cwd: str
    env: Mapping[str, str]  # what the launcher sets on top of the inherited environment
    error_file: str


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    job: JobSpec
    world: World
    ranks: tuple[RankSpec, ...]
    base_env: Mapping[str, str]

    def full_env(self, spec: RankSpec) -> dict[str, str]:
        return {**self.base_env, **spec.env}


# The launcher's own secrets: read from its environment, never passed on to what it starts.
CONTROL_SECRETS = frozenset({"LAUNCHER_JOB_TOKEN"})


def without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less the launcher's secrets (`CONTROL_SECRETS`), for every child process."""
    return {k: v for k, v in environ.items() if k not in CONTROL_SECRETS}


def build(job: JobSpec, world: World, base_env: Mapping[str, str], cpu_count: int) -> LaunchPlan:
    """One RankSpec per slot of this host. Raises ValueError on an inconsistent world.

    The ranks inherit `base_env` less `CONTROL_SECRETS`: the job token authenticates the
    launchers to each other and is no business of the user's code."""
    if not 0 <= world.node_rank < len(world.hosts):
        raise ValueError(f"node rank {world.node_rank} outside {len(world.hosts)} hosts")
    host = world.host
    slots = (
        contract.horovod_slots([(h.name, h.slots) for h in world.hosts])
        if job.backend is Backend.HOROVOD
        else []
    )
    ranks = []
    for local_rank in range(host.slots):
        rank = world.base_rank + local_rank
        error_file = f"{job.error_dir}/rank-{rank}/error.json" if job.error_dir else ""
        env = dict(job.env)
        env.update(_rank_env(job, world, local_rank, rank, error_file))
        env.update(_tuning_env(job, base_env, host.slots, cpu_count))
        if job.backend is Backend.HOROVOD and world.horovod_rendezvous:
            addr, port = world.horovod_rendezvous
            env.update(slots[rank].env(addr, port, job.interface or None))
        ranks.append(RankSpec(rank, local_rank, host.name, job.command, job.cwd, env, error_file))
    return LaunchPlan(job, world, tuple(ranks), without_secrets(base_env))


def _rank_env(
    job: JobSpec, world: World, local_rank: int, rank: int, error_file: str
) -> dict[str, str]:
    if job.backend is Backend.NONE:
        return {}
    rank_env = contract.RankEnv(
        rank=rank,
        local_rank=local_rank,
        world_size=world.world_size,
        local_world_size=world.host.slots,
        node_rank=world.node_rank,
        num_nodes=len(world.hosts),
        master_addr=world.master_addr,
        master_port=world.master_port,
        run_id=world.run_id,
        error_file=error_file,
        host=world.host.name,
        backend=job.backend.value,
        max_restarts=job.max_restarts,
        restart_count=job.restart_count,
    )
    return rank_env.torch_env()


def _tuning_env(
    job: JobSpec, base_env: Mapping[str, str], local_size: int, cpu_count: int
) -> dict[str, str]:
    env: dict[str, str] = {}
    if job.backend is Backend.NONE:
        return env
    # torchrun sets 1; we give each rank its share of the cores, which is as safe against
    # oversubscription and faster for CPU-bound ranks.
    if contract.OMP_NUM_THREADS not in base_env and contract.OMP_NUM_THREADS not in job.env:
        env[contract.OMP_NUM_THREADS] = str(max(1, cpu_count // max(local_size, 1)))
    if contract.NCCL_ASYNC_ERROR_HANDLING not in base_env:
        env[contract.NCCL_ASYNC_ERROR_HANDLING] = "1"
    if job.interface:
        for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
            if var not in base_env and var not in job.env:
                env[var] = job.interface
    return env


def masked(name: str, value: str) -> str:
    """`value`, or a mask when `name` carries hyperparameter values."""
    if name in SECRET_VARS or name.startswith(SECRET_PREFIXES):
        return MASK
    return value


def describe(plan: LaunchPlan) -> dict[str, object]:
    """A JSON-ready description of the plan with hyperparameter values masked."""
    user_args = plan.job.user_args
    ranks = []
    for spec in plan.ranks:
        argv = list(spec.argv)
        if user_args:
            # Arguments come in (name, value) pairs: keep the names, mask the values.
            tail = argv[len(argv) - user_args :]
            argv[len(argv) - user_args :] = [a if i % 2 == 0 else MASK for i, a in enumerate(tail)]
        ranks.append(
            {
                "rank": spec.rank,
                "local_rank": spec.local_rank,
                "host": spec.host,
                "argv": argv,
                "cwd": spec.cwd,
                "env": {k: masked(k, v) for k, v in sorted(spec.env.items())},
            }
        )
    world = plan.world
    return {
        "backend": plan.job.backend.value,
        "world_size": world.world_size,
        "node_rank": world.node_rank,
        "hosts": [{"name": h.name, "slots": h.slots} for h in world.hosts],
        "master": f"{world.master_addr}:{world.master_port}",
        "ranks": ranks,
    }
