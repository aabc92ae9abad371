"""This process's place in the job, read once through the launcher's contract module.

`collectives` never names a rank variable itself: `launcher.contract.read_rank_env` knows the
torchrun, horovodrun, Open MPI and MPICH spellings. Outside any launcher the reader returns
`None` and this module answers with `WORLD_OF_ONE` (rank 0 of 1).

The environment is read on first use, never at import, and then cached: rank helpers sit on hot
paths (`if collectives.is_primary(): ...` in a training loop), and a rank's place in the job
does not change while it runs. `refresh()` drops the cache for the rare process (or test) that
changes its own environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from launcher.contract import WORLD_OF_ONE, RankEnv, read_rank_env

_current: RankEnv | None = None


def read(environ: Mapping[str, str]) -> RankEnv:
    """The rank environment in `environ`, or `WORLD_OF_ONE` when no launcher set one.

    Raises `launcher.contract.ContractError` when a rank variable is present but malformed.
    """
    return read_rank_env(environ) or WORLD_OF_ONE


def current() -> RankEnv:
    """The rank environment of this process (read from `os.environ` once, then cached)."""
    global _current  # noqa: PLW0603 - a process-wide cache is the point
    if _current is None:
        _current = read(os.environ)
    return _current


def launched() -> bool:
    """Whether a launcher (ours, torchrun, horovodrun, mpirun) started this process."""
    return current() is not WORLD_OF_ONE


def refresh() -> RankEnv:
    """Forget the cached environment and read `os.environ` again."""
    global _current  # noqa: PLW0603
    _current = None
    return current()
