"""The three ways a collective can run: alone, through torch.distributed, through Horovod.

Each engine is a small object with the same four methods; `group.init` picks one and `ops`
calls it. Engines do the work and nothing else: no environment reads, no logging, no error
translation (that is `ops`' job), so the per-call cost over the backend is one method call and
one dict lookup.

All operations work in place where the backend does (`all_reduce`, `broadcast`) and return the
tensor they were given, so `x = all_reduce(x)` and `all_reduce(x)` both read naturally.
"""

from __future__ import annotations

from datetime import timedelta
from enum import Enum
from typing import Any, Protocol

import torch
import torch.distributed as dist


class ReduceOp(str, Enum):
    """Reductions every engine supports. Plain strings ("sum", "mean", ...) are accepted too."""

    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    PRODUCT = "product"


class Engine(Protocol):
    """What `ops` needs from a backend."""

    name: str

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp | str) -> torch.Tensor: ...
    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor: ...
    def all_gather(
        self, tensor: torch.Tensor, out: list[torch.Tensor] | None
    ) -> list[torch.Tensor]: ...
    def barrier(self) -> None: ...


def _bad_op(op: object) -> ValueError:
    return ValueError(f"unknown reduction {op!r}; use one of {[o.value for o in ReduceOp]}")


def _check_mean(tensor: torch.Tensor) -> None:
    if not (tensor.is_floating_point() or tensor.is_complex()):
        raise ValueError(f"a mean needs a floating-point tensor, not {tensor.dtype}")


class LocalEngine:
    """A world of one: every collective is an identity (all_gather returns a copy)."""

    name = "none"

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp | str) -> torch.Tensor:
        if op not in _TORCH_OPS:
            raise _bad_op(op)
        if op == ReduceOp.MEAN:
            _check_mean(tensor)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        if src != 0:
            raise ValueError(f"broadcast source rank {src} is outside a world of one")
        return tensor

    def all_gather(
        self, tensor: torch.Tensor, out: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        if out is None:
            return [tensor.clone()]
        out[0].copy_(tensor)
        return out

    def barrier(self) -> None:
        return None


# MEAN maps to None: gloo in older torch has no AVG, so it is a SUM followed by a division.
_TORCH_OPS: dict[str, dist.ReduceOp.RedOpType | None] = {
    ReduceOp.SUM: dist.ReduceOp.SUM,
    ReduceOp.MEAN: None,
    ReduceOp.MIN: dist.ReduceOp.MIN,
    ReduceOp.MAX: dist.ReduceOp.MAX,
    ReduceOp.PRODUCT: dist.ReduceOp.PRODUCT,
}


class TorchEngine:
    """torch.distributed's default process group (gloo or nccl)."""

    def __init__(self, backend: str, world_size: int, timeout: timedelta) -> None:
        self.name = backend
        self._world_size = world_size
        self._timeout = timeout
        self._nccl = backend == "nccl"

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp | str) -> torch.Tensor:
        try:
            top = _TORCH_OPS[op]
        except KeyError:
            raise _bad_op(op) from None
        if top is not None:
            dist.all_reduce(tensor, top)
            return tensor
        _check_mean(tensor)
        if self._nccl:
            dist.all_reduce(tensor, op=dist.ReduceOp.AVG)
        else:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor.div_(self._world_size)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        dist.broadcast(tensor, src)
        return tensor

    def all_gather(
        self, tensor: torch.Tensor, out: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        if out is None:
            out = [torch.empty_like(tensor) for _ in range(self._world_size)]
        dist.all_gather(out, tensor)
        return out

    def barrier(self) -> None:
        if self._nccl:
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            # monitored_barrier names the ranks that never arrived (on rank 0); a plain gloo
            # barrier only says that something timed out.
            dist.monitored_barrier(timeout=self._timeout, wait_all_ranks=True)


class HorovodEngine:
    """horovod.torch, already initialised by `group.init`."""

    name = "horovod"

    def __init__(self, hvd: Any) -> None:
        self._hvd = hvd
        self._ops: dict[str, Any] = {
            ReduceOp.SUM: hvd.Sum,
            ReduceOp.MEAN: hvd.Average,
            ReduceOp.MIN: hvd.Min,
            ReduceOp.MAX: hvd.Max,
            ReduceOp.PRODUCT: hvd.Product,
        }

    def all_reduce(self, tensor: torch.Tensor, op: ReduceOp | str) -> torch.Tensor:
        try:
            hop = self._ops[op]
        except KeyError:
            raise _bad_op(op) from None
        if op == ReduceOp.MEAN:
            _check_mean(tensor)
        self._hvd.allreduce_(tensor, op=hop)
        return tensor

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        self._hvd.broadcast_(tensor, root_rank=src)
        return tensor

    def all_gather(
        self, tensor: torch.Tensor, out: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        # Horovod concatenates along dimension 0; a leading axis of one keeps ranks apart.
        gathered: torch.Tensor = self._hvd.allgather(tensor.unsqueeze(0))
        parts = list(gathered.unbind(0))
        if out is None:
            return parts
        for dst, part in zip(out, parts, strict=True):
            dst.copy_(part)
        return out

    def barrier(self) -> None:
        self._hvd.barrier()
