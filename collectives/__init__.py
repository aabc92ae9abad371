"""What a training script imports: join the job, ask where you are, communicate, save, report.

    import collectives

    @collectives.record
    def main() -> None:
        collectives.init()                    # gloo on CPU, nccl with GPUs, horovod if launched so
        ...
        loss = collectives.all_reduce(loss, "mean")   # also progress, for hang detection
        if collectives.is_primary():
            print(loss.item())
        collectives.save_checkpoint({"model": model.state_dict()}, step)  # resume: load_latest()
        collectives.save(torch.jit.script(model), "model.pt")   # rank 0 only, atomic
        collectives.shutdown()

It works under our launcher (torch, horovod and mpi backends), under torchrun, horovodrun and
mpirun, and outside any launcher as a world of one. The rank environment is read only through
`launcher.contract`. See docs/collectives.md for the full reference. Every collective, and
`progress()` for a long step without one, tells the launcher the rank is alive; `section()`
pauses hang timing (docs/hangs.md).
"""

from collectives.checkpoint import Checkpoint, load_latest, save_checkpoint
from collectives.engines import ReduceOp
from collectives.errors import CollectiveError, CollectiveTimeout
from collectives.files import (
    channel,
    checkpoint_dir,
    model_dir,
    output_data_dir,
    save,
    save_file,
)
from collectives.group import DEFAULT_TIMEOUT, init, shutdown
from collectives.liveness import progress, section
from collectives.ops import (
    all_gather,
    all_reduce,
    barrier,
    broadcast,
    is_primary,
    local_rank,
    local_world_size,
    node_rank,
    primary_first,
    rank,
    world_size,
)
from collectives.record import record

__all__ = [
    "DEFAULT_TIMEOUT",
    "Checkpoint",
    "CollectiveError",
    "CollectiveTimeout",
    "ReduceOp",
    "all_gather",
    "all_reduce",
    "barrier",
    "broadcast",
    "channel",
    "checkpoint_dir",
    "init",
    "is_primary",
    "load_latest",
    "local_rank",
    "local_world_size",
    "model_dir",
    "node_rank",
    "output_data_dir",
    "primary_first",
    "progress",
    "rank",
    "record",
    "save",
    "save_checkpoint",
    "save_file",
    "section",
    "shutdown",
    "world_size",
]
