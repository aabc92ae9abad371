"""Resume after a restart: save a checkpoint on the primary rank, load the latest on every rank.

    state = collectives.load_latest()            # None on a fresh start
    start = state.step + 1 if state else 0
    if state:
        model.load_state_dict(state.data["model"])
    for step in range(start, steps):
        ...
        if step % 100 == 0:
            collectives.save_checkpoint({"model": model.state_dict()}, step)

The folder is `collectives.checkpoint_dir()`: what the launcher resolved (`--checkpoint-dir`,
SageMaker's checkpointconfig.json `LocalPath`, else `/opt/ml/checkpoints`), which SageMaker
syncs with S3 and the launcher never cleans. Step N's checkpoint is `step-<N, 12 digits>.ckpt`
(`launcher.contract.checkpoint_name`; the launcher reads the names to tell whether an attempt
advanced the checkpoint); the latest is the highest step.

`save_checkpoint` writes only on the primary rank (global rank 0), atomically (a hidden
temporary file, fsynced, renamed into place: a crash leaves the previous checkpoint whole),
inside a progress section so that hang timing pauses while it writes. `keep` prunes older
checkpoints after a save (default: keep all). No barrier is implied.

`load_latest` returns the same `Checkpoint` on every rank. With several ranks and a joined
group, the primary reads the file and broadcasts its bytes (every host need not see the
primary's folder: on SageMaker each host has its own /opt/ml/checkpoints); that is a
collective, so every rank must call it. Without a group each rank reads its own folder.
Raises what `torch.load` raises for a damaged file, and `CollectiveError` if the broadcast
fails.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectives import env, group
from collectives.files import atomic_write, checkpoint_dir
from launcher.contract import (
    checkpoint_name,
    checkpoint_step,
    latest_checkpoint_step,
    progress_section,
)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A loaded checkpoint: the step it was saved at, and what was saved."""

    step: int
    data: Any
    path: Path  # on the primary's host


def save_checkpoint(
    state: object,
    step: int,
    *,
    keep: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Save `state` (anything `torch.save` takes) as step `step`'s checkpoint, atomically, on
    the primary rank; its path there, None on the other ranks. With `keep`, only the `keep`
    latest checkpoints remain. Raises ValueError for a negative step or `keep` < 1."""
    if keep is not None and keep < 1:
        raise ValueError("keep must be at least 1")
    name = checkpoint_name(step)  # ValueError for a bad step, on every rank alike
    if env.current().rank != 0:
        return None
    import torch  # noqa: PLC0415 - keep the module importable for paths without torch

    folder = checkpoint_dir(environ)
    path = folder / name
    with progress_section("checkpoint"):
        atomic_write(path, lambda f: torch.save(state, f))
    if keep is not None:
        steps = sorted(s for s in map(checkpoint_step, _names(folder)) if s is not None)
        for old in steps[:-keep]:
            (folder / checkpoint_name(old)).unlink(missing_ok=True)
    return path


def load_latest(
    map_location: str = "cpu", environ: Mapping[str, str] | None = None
) -> Checkpoint | None:
    """The latest checkpoint, the same on every rank; None when there is none yet."""
    import torch  # noqa: PLC0415

    folder = checkpoint_dir(environ)
    rank_env = env.current()
    shared = rank_env.world_size > 1 and group.active() is not None
    if not shared:
        step = latest_checkpoint_step(folder)
        if step is None:
            return None
        path = folder / checkpoint_name(step)
        return Checkpoint(step, torch.load(path, map_location=map_location), path)
    from collectives.ops import broadcast  # noqa: PLC0415 - the collective ops import torch

    device = _device()
    step, payload = -1, b""
    if rank_env.rank == 0:
        found = latest_checkpoint_step(folder)
        if found is not None:
            step, payload = found, (folder / checkpoint_name(found)).read_bytes()
    header = broadcast(torch.tensor([step, len(payload)], dtype=torch.int64, device=device))
    step, size = int(header[0]), int(header[1])
    if step < 0:
        return None
    buffer = torch.empty(size, dtype=torch.uint8, device=device)
    if rank_env.rank == 0:
        buffer.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    broadcast(buffer)
    raw = buffer.cpu().numpy().tobytes()
    data = torch.load(io.BytesIO(raw), map_location=map_location)
    return Checkpoint(step, data, folder / checkpoint_name(step))


def _device() -> Any:
    """Where a broadcast's tensors must live: this rank's GPU under nccl, else the CPU."""
    import torch  # noqa: PLC0415
    import torch.distributed as dist  # noqa: PLC0415

    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _names(folder: Path) -> list[str]:
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []
