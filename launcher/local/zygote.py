"""`python -m launcher.local.zygote HOSTS_FILE`: start a local job's host launchers by fork.

`launcher local` runs this as its single child. It imports the whole pipeline once, then forks
one `train` per simulated host with that host's variables (read from HOSTS_FILE, written 0600
by `launcher local`, since it holds the job token) and waits for them all. Each child runs
`cli.train_main` exactly as `python -m launcher train` would: the same code path, without
paying the interpreter start and the imports once per host. Exits with the leader's code, or
the first other failure's; a host killed by signal N counts as 128+N.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import NoReturn


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The hosts get the signal too (same process group) and report; this one keeps waiting."""


def main() -> NoReturn:
    envs = json.loads(Path(sys.argv[1]).read_text())
    from launcher import cli  # noqa: PLC0415 - imported once, before forking

    cli.preload()
    gc.freeze()  # keep the imported objects out of the children's GC passes (and shared)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    pids = fork_each(envs, lambda: cli.train_main([]))
    codes = [128 - c if c < 0 else c for c in wait_each(pids)]
    failed = [c for c in codes if c]
    sys.exit(codes[0] or (failed[0] if failed else 0))


def fork_each(envs: list[dict[str, str]], body: Callable[[], int]) -> list[int]:
    """Fork one child per environment; each applies its variables, runs `body`, exits with it.

    For `launcher local`: its host launchers are forked from one process that has already
    imported the pipeline, which saves every host the interpreter start and the imports
    (about 60 ms of CPU each on 2 cores). The caller must not have started any thread. A
    child restores the default signal dispositions first and never returns.
    """
    pids = []
    for env in envs:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    signal.signal(sig, signal.SIG_DFL)
                os.environ.update(env)
                code = body()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        pids.append(pid)
    return pids


def wait_each(pids: list[int]) -> list[int]:
    """Wait for every child of `fork_each`; their statuses as returncodes (-N: signal N)."""
    codes = []
    for pid in pids:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except InterruptedError:
                continue
        codes.append(os.waitstatus_to_exitcode(status))
    return codes


if __name__ == "__main__":
    main()
