"""Rank helpers and collectives: the calls a training loop makes.

Each collective is one call into the engine chosen by `init` (see `engines`), or, for a sum
all_reduce and a broadcast on torch.distributed, a direct call into torch; the wrapper adds a
global read and a `try` that costs nothing unless the backend raises. Backend errors become
`CollectiveError` / `CollectiveTimeout` naming the operation (see `errors`). Outside a launch
(a world of one) collectives are identities and need no `init`.

Each collective also counts as progress for the launcher's hang detection, on the way in
(about 0.3 µs: two stores into a mapped file, see `liveness`), so a rank stuck before a
collective shows less progress than the ranks waiting in it.

The rank helpers answer from the rank environment, which is read once; they are valid before
`init` and cheap enough for a training loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from collectives import env, group
from collectives.engines import ReduceOp
from collectives.errors import CollectiveError, translate
from launcher.contract import progress as _progress

_SUM = ReduceOp.SUM


def rank() -> int:
    """This process's global rank (0 outside a launch)."""
    return env.current().rank


def world_size() -> int:
    """The number of ranks in the job (1 outside a launch)."""
    return env.current().world_size


def local_rank() -> int:
    """This rank's index on its host (0 outside a launch)."""
    return env.current().local_rank


def local_world_size() -> int:
    """The number of ranks on this host (1 outside a launch)."""
    return env.current().local_world_size


def node_rank() -> int:
    """This host's index in the job (0 outside a launch)."""
    return env.current().node_rank


def is_primary() -> bool:
    """Whether this is global rank 0, the rank that saves the model and prints the summary."""
    return env.current().rank == 0


def _error(op: str, exc: RuntimeError) -> CollectiveError:
    state = group.active()
    rank_env = state.env if state is not None else env.current()
    return translate(
        op,
        exc,
        rank=rank_env.rank,
        world_size=rank_env.world_size,
        timeout_s=state.timeout.total_seconds() if state is not None else None,
    )


def all_reduce(tensor: torch.Tensor, op: ReduceOp | str = _SUM) -> torch.Tensor:
    """Reduce `tensor` across ranks in place ("sum", "mean", "min", "max", "product"); return it.

    "mean" needs a floating-point tensor. Raises `CollectiveTimeout` / `CollectiveError`.
    """
    _progress()
    try:
        if op is _SUM and group.torch_direct:
            dist.all_reduce(tensor)
            return tensor
        return group.current.all_reduce(tensor, op)
    except CollectiveError:
        raise
    except RuntimeError as exc:
        raise _error("all_reduce", exc) from exc


def broadcast(tensor: torch.Tensor, src: int = 0) -> torch.Tensor:
    """Overwrite `tensor` on every rank with rank `src`'s value, in place; return it."""
    _progress()
    try:
        if group.torch_direct:
            dist.broadcast(tensor, src)
            return tensor
        return group.current.broadcast(tensor, src)
    except CollectiveError:
        raise
    except RuntimeError as exc:
        raise _error("broadcast", exc) from exc


def all_gather(tensor: torch.Tensor, out: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape and dtype everywhere), as a list indexed by rank.

    Pass `out` (one tensor per rank, like `tensor`) to reuse buffers across calls.
    """
    _progress()
    try:
        return group.current.all_gather(tensor, out)
    except CollectiveError:
        raise
    except RuntimeError as exc:
        raise _error("all_gather", exc) from exc


def barrier() -> None:
    """Wait until every rank arrives. On gloo a timeout names the missing ranks (on rank 0)."""
    _progress()
    try:
        group.current.barrier()
    except CollectiveError:
        raise
    except RuntimeError as exc:
        raise _error("barrier", exc) from exc


@contextmanager
def primary_first(local: bool = False) -> Iterator[None]:
    """Run the body on the primary rank first, then on the others (e.g. a download).

    With `local=True` the first is each host's local rank 0 (a per-host cache). Every rank of
    the world takes part in both barriers, so all ranks must enter. If the first rank's body
    raises, the others wait at the barrier until the launcher stops the job or it times out.
    """
    first = (env.current().local_rank if local else env.current().rank) == 0
    if not first:
        barrier()
    yield
    if first:
        barrier()
