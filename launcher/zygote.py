"""`python -m launcher.zygote HOSTS_FILE`: start a local job's host launchers by fork.

`launcher local` runs this as its single child. It imports the whole pipeline once, then forks
one `train` per simulated host with that host's variables (read from HOSTS_FILE, written 0600
by `launcher local`, since it holds the job token) and waits for them all. Each child runs
`cli.train_main` exactly as `python -m launcher train` would: the same code path, without
paying the interpreter start and the imports once per host. Exits with the leader's code, or
the first other failure's; a host killed by signal N counts as 128+N.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import NoReturn


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The hosts get the signal too (same process group) and report; this one keeps waiting."""


def main() -> NoReturn:
    envs = json.loads(Path(sys.argv[1]).read_text())
    from launcher import cli, procs  # noqa: PLC0415 - imported once, before forking

    cli.preload()
    gc.freeze()  # keep the imported objects out of the children's GC passes (and shared)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    pids = procs.fork_each(envs, lambda: cli.train_main([]))
    codes = [128 - c if c < 0 else c for c in procs.wait_each(pids)]
    failed = [c for c in codes if c]
    sys.exit(codes[0] or (failed[0] if failed else 0))


if __name__ == "__main__":
    main()
