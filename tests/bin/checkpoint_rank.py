"""A rank that saves three checkpoints (keeping two) and loads the latest: `checkpoint_rank.py`.

Each rank may have its own checkpoint folder (LAUNCHER_CHECKPOINT_DIR): only the primary's
holds files, and `load_latest` must still give every rank the primary's latest. Prints one
`RESULT {...}` line: what it loaded before and after the saves, and its folder's files.
"""

from __future__ import annotations

import json
import os

import torch

import collectives


@collectives.record
def main() -> None:
    collectives.init("gloo", timeout=60)
    before = collectives.load_latest()
    for step in range(3):
        collectives.save_checkpoint({"w": torch.full((2,), float(step))}, step, keep=2)
    collectives.barrier()
    got = collectives.load_latest()
    assert got is not None
    folder = collectives.checkpoint_dir()
    files = sorted(os.listdir(folder)) if folder.exists() else []
    result = {"before": before is not None, "step": got.step, "w": got.data["w"].tolist()}
    print("RESULT " + json.dumps({**result, "files": files}), flush=True)
    collectives.shutdown()


if __name__ == "__main__":
    main()
