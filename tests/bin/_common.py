"""Helpers shared by the rank programs in this folder (standard library only).

The programs run as `python tests/bin/<name>.py`, so this folder is `sys.path[0]` and they
import this module directly. A rank tells the test it is ready (its signal handlers are in
place, its children started) by writing `$READY_DIR/rank-<RANK>.json` atomically; tests poll
for those files with a deadline instead of sleeping.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def write_json(path: str, obj: Any) -> None:
    """Write `obj` to `path` whole or not at all (a reader never sees half a file)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def ready(**extra: Any) -> None:
    """Announce this rank (pid, process group, session and `extra`) in $READY_DIR, if set."""
    folder = os.environ.get("READY_DIR")
    if not folder:
        return
    info = {"rank": rank(), "pid": os.getpid(), "pgid": os.getpgrp(), "sid": os.getsid(0)}
    write_json(os.path.join(folder, f"rank-{rank()}.json"), {**info, **extra})


def wait_all_ready(timeout: float = 60.0) -> None:
    """Block until every rank of the world has announced itself in $READY_DIR."""
    folder = os.environ["READY_DIR"]
    names = {f"rank-{r}.json" for r in range(world_size())}
    deadline = time.monotonic() + timeout
    while not names <= set(os.listdir(folder)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every rank became ready in {folder}")
        time.sleep(0.005)


def sleep_forever() -> None:
    while True:
        signal.pause()
