"""Joining the job's process group (`init`), leaving it (`shutdown`), and the engine in use.

`init` reads the rank environment once (through `launcher.contract`), chooses the engine and
publishes it in two module globals that `ops` reads on every call: `current` (the engine) and
`torch_direct` (whether a plain sum or broadcast may call torch.distributed without the engine
in between: on a latency-bound 2-rank all_reduce every Python frame on the path is measurable).
Before `init`, and outside any launch, the engine is the world-of-one identity; a launched rank
of a larger world that calls a collective before `init` gets a `CollectiveError` saying so,
never a silent identity.

A torch process group that `init` created is also left at interpreter exit (an `atexit` hook;
see `_leave_at_exit`), so a script that returns without `shutdown`, after a failed collective
above all, still exits with its own code.
"""

from __future__ import annotations

import atexit
import gc
import socket
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from collectives import env, liveness
from collectives.engines import Engine, HorovodEngine, LocalEngine, ReduceOp, TorchEngine
from collectives.errors import CollectiveError, translate
from collectives.record import enable_faulthandler
from launcher import contract
from launcher.contract import RankEnv

DEFAULT_TIMEOUT = timedelta(minutes=30)  # torch's own default for gloo process groups
_LOCAL = LocalEngine()


@dataclass(frozen=True, slots=True)
class Active:
    """The state `init` leaves behind: where this rank is and how collectives run."""

    env: RankEnv
    backend: str  # "gloo", "nccl", "horovod", another torch backend, or "none"
    timeout: timedelta
    engine: Engine
    owns_group: bool  # whether `shutdown` should destroy torch's process group


class _Pending:
    """The engine before `init`: the identity in a world of one, else an error."""

    name = "pending"

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp | str) -> torch.Tensor:
        return _resolve().all_reduce(tensor, op)

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        return _resolve().broadcast(tensor, src)

    def all_gather(
        self, tensor: torch.Tensor, out: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        return _resolve().all_gather(tensor, out)

    def barrier(self) -> None:
        _resolve().barrier()


_active: Active | None = None
current: Engine = _Pending()
torch_direct = False


def _publish(state: Active | None) -> None:
    global _active, current, torch_direct  # noqa: PLW0603 - the hot path reads these
    _active = state
    current = state.engine if state is not None else _Pending()
    torch_direct = state is not None and isinstance(state.engine, TorchEngine)


def choose_backend(requested: str, rank_env: RankEnv, cuda_devices: int, nccl: bool) -> str:
    """The backend `init(requested)` uses (pure).

    "auto" means Horovod when the launcher's backend is horovod, else NCCL when CUDA devices
    and NCCL exist, else gloo. Any other name is used as given.
    """
    if requested != "auto":
        return requested
    if rank_env.backend == "horovod":
        return "horovod"
    return "nccl" if cuda_devices > 0 and nccl else "gloo"


def init(backend: str = "auto", timeout: timedelta | float = DEFAULT_TIMEOUT) -> RankEnv:
    """Join the job; return this rank's `RankEnv`. Idempotent.

    `backend` is "auto", "gloo", "nccl" or "horovod" (other torch backend names pass through).
    `timeout` (a timedelta or seconds) bounds every collective and the rendezvous. With CUDA
    devices the current device becomes `local_rank % device_count`. Outside a launch nothing
    is started: a world of one whose collectives are identities. A script that already called
    `torch.distributed.init_process_group` keeps its group. Faulthandler is enabled. Under our
    launcher the rank's progress file is attached and its stack dump installed before the
    rendezvous (so a rank stuck there can be seen); the rendezvous is a progress section (it
    pauses hang timing: `timeout` bounds it), and joining counts as progress.

    Raises `CollectiveError` (op "init") when the rendezvous fails or times out, when MPI
    launched the rank without MASTER_ADDR/MASTER_PORT, or when Horovod is wanted but missing;
    `ValueError` when called again with a different explicit backend; `ContractError` when a
    rank variable is malformed.
    """
    if _active is not None:
        # Outside a launch no backend was started, so any request is as good as another.
        if backend not in ("auto", _active.backend) and _active.backend != "none":
            raise ValueError(f"collectives already initialised with {_active.backend!r}")
        return _active.env
    enable_faulthandler()
    liveness.attach()
    rank_env = env.current()
    td = timeout if isinstance(timeout, timedelta) else timedelta(seconds=timeout)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    chosen = choose_backend(backend, rank_env, cuda, dist.is_nccl_available())
    # The rendezvous is a section: it waits for the slowest rank of the job to start (another
    # host may still be installing or downloading), which `timeout` bounds, not the hang
    # window; timing it as a stall would declare a skewed start-up hung. Leaving it is progress.
    with liveness.section("init"):
        if chosen == "horovod":
            state = _init_horovod(rank_env, td, cuda)
        elif dist.is_initialized():
            name = str(dist.get_backend())
            state = Active(rank_env, name, td, TorchEngine(name, dist.get_world_size(), td), False)
        elif not env.launched():
            state = Active(rank_env, "none", td, _LOCAL, owns_group=False)
        else:
            state = _init_torch(rank_env, chosen, td, cuda)
    _publish(state)  # joined: leaving the section was this rank's progress
    return state.env


def _init_torch(rank_env: RankEnv, backend: str, timeout: timedelta, cuda: int) -> Active:
    if cuda > 0:
        torch.cuda.set_device(rank_env.local_rank % cuda)
    kwargs: dict[str, object] = {}
    if rank_env.master_port != 0:
        host = rank_env.master_addr
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        kwargs["init_method"] = f"tcp://{host}:{rank_env.master_port}"
    elif rank_env.world_size == 1:
        kwargs["store"] = dist.HashStore()  # type: ignore[attr-defined] # one rank needs no port
    else:
        raise CollectiveError(
            "init",
            f"rank {rank_env.rank} of {rank_env.world_size} ({rank_env.backend} launch) has no "
            f"{contract.MASTER_PORT}: the launcher must set {contract.MASTER_ADDR} and "
            f"{contract.MASTER_PORT} for torch.distributed (on {socket.gethostname()})",
            rank=rank_env.rank,
            world_size=rank_env.world_size,
        )
    try:
        dist.init_process_group(
            backend,
            rank=rank_env.rank,
            world_size=rank_env.world_size,
            timeout=timeout,
            **kwargs,  # type: ignore[arg-type]
        )
    except RuntimeError as exc:
        raise translate(
            "init",
            exc,
            rank=rank_env.rank,
            world_size=rank_env.world_size,
            timeout_s=timeout.total_seconds(),
        ) from exc
    engine = TorchEngine(backend, rank_env.world_size, timeout)
    _register_exit_hook()
    return Active(rank_env, backend, timeout, engine, owns_group=True)


_exit_hook_registered = False


def _register_exit_hook() -> None:
    """Make `_leave_at_exit` run at interpreter exit (once per process, however many inits)."""
    global _exit_hook_registered  # noqa: PLW0603 - one registration per process
    if not _exit_hook_registered:
        # Registered after torch was imported, so it runs before torch's own exit hooks
        # (atexit is last in, first out), and after any the script registers later.
        atexit.register(_leave_at_exit)
        _exit_hook_registered = True


def _leave_at_exit() -> None:
    """At interpreter exit, destroy the process group `init` created if it is still there.

    Why: gloo runs each collective on a worker thread (ProcessGroupGloo::runLoop), which
    completes the collective's future, waking the caller, and only afterwards drops its own
    reference to the work object. When that reference is the last one, the work's destructor
    frees the caller's tensors, and releasing a tensor that has a Python object takes the GIL.
    A rank that catches a `CollectiveError` (or finishes a collective) and returns at once can
    hold the GIL until `Py_FinalizeEx` while the worker waits for it; once the interpreter is
    finalizing, Python ends a thread that waits for the GIL with `pthread_exit`, whose
    unwinding through the work's `noexcept` destructor calls `std::terminate`: SIGABRT,
    "terminate called without an active exception", instead of the rank's own exit code
    (1 exit in 25 to 1 in 4 under CPU load in our loops). atexit hooks run before the
    interpreter starts finalizing, and destroying the group joins gloo's worker threads with
    the GIL released (torch releases it in the process group's destructor), so every work
    object is dropped while the GIL can still be taken; afterwards no gloo thread is left that
    could touch Python. Limit: a group that something else still holds at exit (a module-level
    DistributedDataParallel, say) is only released later, by torch's own teardown.

    The exit code is untouched: this hook neither exits nor raises. `sys.exit(n)`, a normal
    return and an uncaught exception (traceback already printed, code 1) end as they would
    without it. A group the script destroyed itself, or one `init` adopted, is left alone. A
    failure to destroy is reported in one line on stderr.
    """
    state = _active
    if state is None or not state.owns_group or state.backend == "horovod":
        return
    try:
        shutdown()
    except Exception as exc:  # an exit hook must never turn an exit into a traceback
        print(
            f"collectives: could not destroy the process group at exit: {exc}",
            file=sys.stderr,
            flush=True,
        )


def _init_horovod(rank_env: RankEnv, timeout: timedelta, cuda: int) -> Active:
    try:
        import horovod.torch as hvd  # noqa: PLC0415 - optional, heavy, built from source
    except ImportError as exc:
        raise CollectiveError(
            "init",
            f"the horovod backend was chosen (launcher backend {rank_env.backend!r}) but "
            f"horovod.torch cannot be imported: {exc}",
            rank=rank_env.rank,
            world_size=rank_env.world_size,
        ) from exc
    hvd.init()
    if cuda > 0:
        torch.cuda.set_device(int(hvd.local_rank()) % cuda)
    return Active(rank_env, "horovod", timeout, HorovodEngine(hvd), owns_group=False)


def active() -> Active | None:
    """The state left by `init`, or `None` before it (and after `shutdown`)."""
    return _active


def engine() -> Engine:
    """The engine collectives run on (before `init`: the world-of-one identity).

    Raises `CollectiveError` when this rank belongs to a larger world and `init` was not called.
    """
    return _active.engine if _active is not None else _resolve()


def _resolve() -> Engine:
    rank_env = env.current()
    if rank_env.world_size == 1:
        return _LOCAL
    raise CollectiveError(
        "collective",
        f"rank {rank_env.rank} of {rank_env.world_size}: call collectives.init() first",
        rank=rank_env.rank,
        world_size=rank_env.world_size,
    )


def shutdown() -> None:
    """Leave the process group `init` joined (destroy it, or shut Horovod down). Idempotent.

    Also runs at interpreter exit for a torch group `init` created and the script did not
    leave (see `_leave_at_exit`). Raises what torch or Horovod raise while tearing down.
    """
    state = _active
    _publish(None)
    if state is None:
        return
    if state.backend == "horovod":
        import horovod.torch as hvd  # noqa: PLC0415

        hvd.shutdown()
    elif state.owns_group and dist.is_initialized():
        # Objects that still hold the group, such as a DistributedDataParallel caught in a
        # reference cycle, would otherwise release it during interpreter teardown, where gloo's
        # destructor can abort the process (SIGABRT, "terminate called without an active
        # exception"; seen in about one run in five of the 4-rank demo). Collect them now.
        gc.collect()
        dist.destroy_process_group()
