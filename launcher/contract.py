"""The rank environment contract, written once and shared by the launcher and `collectives`.

The launcher *produces* these variables for every rank (`RankEnv.torch_env`,
`HorovodSlot.env`); a training script *consumes* them through `collectives`, which calls
`read_rank_env`. Keeping both sides in one stdlib-only module is what makes the round trip
testable and stops a second copy of the variable names from drifting (submitit's `_env`).

Readers accept, in order of preference: the torchrun contract (what our `torch` backend sets),
the horovodrun gloo contract, Open MPI's `OMPI_COMM_WORLD_*`, and MPICH/Intel MPI's `PMI_*`.
Outside any launcher `read_rank_env` returns `None` and callers use `WORLD_OF_ONE`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# --- torchrun contract (torch.distributed.elastic LocalElasticAgent) ---
RANK = "RANK"
LOCAL_RANK = "LOCAL_RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
GROUP_RANK = "GROUP_RANK"
GROUP_WORLD_SIZE = "GROUP_WORLD_SIZE"
ROLE_RANK = "ROLE_RANK"
ROLE_WORLD_SIZE = "ROLE_WORLD_SIZE"
ROLE_NAME = "ROLE_NAME"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
RUN_ID = "TORCHELASTIC_RUN_ID"
RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"
MAX_RESTARTS = "TORCHELASTIC_MAX_RESTARTS"
ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
NCCL_ASYNC_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
OMP_NUM_THREADS = "OMP_NUM_THREADS"

# --- ours: extra facts a rank may want, none of which torch needs ---
HOST = "LAUNCHER_HOST"  # the SageMaker host name this rank runs on (algo-1, ...)
BACKEND = "LAUNCHER_BACKEND"  # torch | horovod | mpi | none

# --- horovodrun gloo contract (horovod/runner/gloo_run.py) ---
HOROVOD_RANK = "HOROVOD_RANK"
HOROVOD_SIZE = "HOROVOD_SIZE"
HOROVOD_LOCAL_RANK = "HOROVOD_LOCAL_RANK"
HOROVOD_LOCAL_SIZE = "HOROVOD_LOCAL_SIZE"
HOROVOD_CROSS_RANK = "HOROVOD_CROSS_RANK"
HOROVOD_CROSS_SIZE = "HOROVOD_CROSS_SIZE"
HOROVOD_HOSTNAME = "HOROVOD_HOSTNAME"
HOROVOD_GLOO_RENDEZVOUS_ADDR = "HOROVOD_GLOO_RENDEZVOUS_ADDR"
HOROVOD_GLOO_RENDEZVOUS_PORT = "HOROVOD_GLOO_RENDEZVOUS_PORT"
HOROVOD_CONTROLLER = "HOROVOD_CONTROLLER"
HOROVOD_CPU_OPERATIONS = "HOROVOD_CPU_OPERATIONS"
HOROVOD_GLOO_IFACE = "HOROVOD_GLOO_IFACE"

# --- Open MPI (set by mpirun / orted) ---
OMPI_RANK = "OMPI_COMM_WORLD_RANK"
OMPI_SIZE = "OMPI_COMM_WORLD_SIZE"
OMPI_LOCAL_RANK = "OMPI_COMM_WORLD_LOCAL_RANK"
OMPI_LOCAL_SIZE = "OMPI_COMM_WORLD_LOCAL_SIZE"
# --- MPICH / Intel MPI ---
PMI_RANK = "PMI_RANK"
PMI_SIZE = "PMI_SIZE"
MPI_LOCALRANKID = "MPI_LOCALRANKID"
MPI_LOCALNRANKS = "MPI_LOCALNRANKS"


class ContractError(ValueError):
    """A rank variable is present but malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class RankEnv:
    """Where one rank sits in the job. Produced by the launcher, read back by `collectives`."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    run_id: str = "none"
    error_file: str = ""
    host: str = ""
    backend: str = "torch"
    restart_count: int = 0
    max_restarts: int = 0
    role_name: str = "default"

    def torch_env(self) -> dict[str, str]:
        """The torchrun contract for this rank (role = the whole world, as torchrun's default)."""
        return {
            RANK: str(self.rank),
            LOCAL_RANK: str(self.local_rank),
            WORLD_SIZE: str(self.world_size),
            LOCAL_WORLD_SIZE: str(self.local_world_size),
            GROUP_RANK: str(self.node_rank),
            GROUP_WORLD_SIZE: str(self.num_nodes),
            ROLE_RANK: str(self.rank),
            ROLE_WORLD_SIZE: str(self.world_size),
            ROLE_NAME: self.role_name,
            MASTER_ADDR: self.master_addr,
            MASTER_PORT: str(self.master_port),
            RUN_ID: self.run_id,
            RESTART_COUNT: str(self.restart_count),
            MAX_RESTARTS: str(self.max_restarts),
            ERROR_FILE: self.error_file,
            HOST: self.host,
            BACKEND: self.backend,
        }


WORLD_OF_ONE = RankEnv(
    rank=0,
    local_rank=0,
    world_size=1,
    local_world_size=1,
    node_rank=0,
    num_nodes=1,
    master_addr="127.0.0.1",
    master_port=0,
    backend="none",
)


@dataclass(frozen=True, slots=True)
class HorovodSlot:
    """One slot of Horovod's host assignment (`horovod.runner.common.util.hosts.SlotInfo`)."""

    hostname: str
    rank: int
    local_rank: int
    cross_rank: int
    size: int
    local_size: int
    cross_size: int

    def env(self, rendezvous_addr: str, rendezvous_port: int, iface: str | None) -> dict[str, str]:
        """The horovodrun gloo variables for this slot."""
        env = {
            HOROVOD_HOSTNAME: self.hostname,
            HOROVOD_RANK: str(self.rank),
            HOROVOD_SIZE: str(self.size),
            HOROVOD_LOCAL_RANK: str(self.local_rank),
            HOROVOD_LOCAL_SIZE: str(self.local_size),
            HOROVOD_CROSS_RANK: str(self.cross_rank),
            HOROVOD_CROSS_SIZE: str(self.cross_size),
            HOROVOD_GLOO_RENDEZVOUS_ADDR: rendezvous_addr,
            HOROVOD_GLOO_RENDEZVOUS_PORT: str(rendezvous_port),
            HOROVOD_CONTROLLER: "gloo",
            HOROVOD_CPU_OPERATIONS: "gloo",
        }
        if iface:
            env[HOROVOD_GLOO_IFACE] = iface
        return env


def horovod_slots(hosts: list[tuple[str, int]]) -> list[HorovodSlot]:
    """Horovod's slot plan for `(hostname, slots)` pairs, in host order.

    Ranks go host by host; `cross_size` of a slot is the number of hosts that have a slot with
    the same local rank, and `cross_rank` is this host's index among them. With uneven slots the
    cross values differ between ranks of one host, exactly as `get_host_assignments` does.
    """
    size = sum(n for _, n in hosts)
    max_local = max((n for _, n in hosts), default=0)
    hosts_with_local = [[h for h, n in hosts if n > lr] for lr in range(max_local)]
    slots: list[HorovodSlot] = []
    rank = 0
    for hostname, n in hosts:
        for local_rank in range(n):
            peers = hosts_with_local[local_rank]
            slots.append(
                HorovodSlot(
                    hostname=hostname,
                    rank=rank,
                    local_rank=local_rank,
                    cross_rank=peers.index(hostname),
                    size=size,
                    local_size=n,
                    cross_size=len(peers),
                )
            )
            rank += 1
    return slots


def _int(environ: Mapping[str, str], name: str) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        raise ContractError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ContractError(f"{name}={raw!r} is negative")
    return value


def _get_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _int(environ, name) if environ.get(name, "") != "" else default


def read_rank_env(environ: Mapping[str, str]) -> RankEnv | None:
    """Read this process's place in the job, or `None` when no launcher started it.

    Raises `ContractError` when a variable is present but not a non-negative integer, or when
    rank and size disagree (rank >= size), so a broken launch fails loudly instead of training
    a silently wrong world.
    """
    env = _read(environ)
    if env is None:
        return None
    if env.rank >= env.world_size or env.local_rank >= env.local_world_size:
        raise ContractError(
            f"rank {env.rank}/{env.world_size} (local {env.local_rank}/{env.local_world_size})"
            " is outside its world"
        )
    return env


def _read(environ: Mapping[str, str]) -> RankEnv | None:
    master_addr = environ.get(MASTER_ADDR, "127.0.0.1")
    master_port = _get_int(environ, MASTER_PORT, 0)
    host = environ.get(HOST, "")
    error_file = environ.get(ERROR_FILE, "")
    if environ.get(RANK, "") != "" and environ.get(WORLD_SIZE, "") != "":
        world = _int(environ, WORLD_SIZE)
        return RankEnv(
            rank=_int(environ, RANK),
            local_rank=_get_int(environ, LOCAL_RANK, 0),
            world_size=world,
            local_world_size=_get_int(environ, LOCAL_WORLD_SIZE, world),
            node_rank=_get_int(environ, GROUP_RANK, 0),
            num_nodes=_get_int(environ, GROUP_WORLD_SIZE, 1),
            master_addr=master_addr,
            master_port=master_port,
            run_id=environ.get(RUN_ID, "none"),
            error_file=error_file,
            host=host,
            backend=environ.get(BACKEND, "torch"),
            restart_count=_get_int(environ, RESTART_COUNT, 0),
            max_restarts=_get_int(environ, MAX_RESTARTS, 0),
            role_name=environ.get(ROLE_NAME, "default"),
        )
    for rank_var, size_var, lrank_var, lsize_var, node_var, nodes_var, backend in (
        (
            HOROVOD_RANK,
            HOROVOD_SIZE,
            HOROVOD_LOCAL_RANK,
            HOROVOD_LOCAL_SIZE,
            HOROVOD_CROSS_RANK,
            HOROVOD_CROSS_SIZE,
            "horovod",
        ),
        (OMPI_RANK, OMPI_SIZE, OMPI_LOCAL_RANK, OMPI_LOCAL_SIZE, "", "", "mpi"),
        (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS, "", "", "mpi"),
    ):
        if environ.get(rank_var, "") == "" or environ.get(size_var, "") == "":
            continue
        world = _int(environ, size_var)
        local_size = _get_int(environ, lsize_var, world)
        rank = _int(environ, rank_var)
        # MPI does not name a node rank; with contiguous slots it is rank // local size.
        node_rank = (
            _get_int(environ, node_var, rank // max(local_size, 1))
            if node_var
            else (rank // max(local_size, 1))
        )
        num_nodes = (
            _get_int(environ, nodes_var, 1) if nodes_var else -(-world // max(local_size, 1))
        )
        return RankEnv(
            rank=rank,
            local_rank=_get_int(environ, lrank_var, 0),
            world_size=world,
            local_world_size=local_size,
            node_rank=node_rank,
            num_nodes=num_nodes,
            master_addr=master_addr,
            master_port=master_port,
            error_file=error_file,
            host=host,
            backend=environ.get(BACKEND, backend),
        )
    return None
