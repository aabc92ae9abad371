"""What the benchmarks share: where things are, byte-compiling, medians, rotation, free ports.

Every benchmark is a module of this package, run from the repository root as
`.venv/bin/python -m bench.<name>`. SageMaker trees come from tests/helpers/trees.py and the
simulated cluster from tests/multihost/cluster.py, imported as packages like any other code.
"""

from __future__ import annotations

import compileall
import random
import socket
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"

T = TypeVar("T")


def byte_compile() -> None:
    """Write the .pyc files of the project's packages.

    Where PYTHONDONTWRITEBYTECODE=1 is set (it is on our machines), a module changed since its
    .pyc was written is compiled again at every interpreter start, which would be timed as the
    launcher's start-up.
    """
    for package in ("launcher", "collectives", "serving"):
        compileall.compile_dir(ROOT / package, quiet=1)


def median(values: Iterable[float]) -> float:
    """The median; NaN when there are no values (a section that measured nothing still
    prints and serialises, where `statistics.median` would raise)."""
    ordered = list(values)
    return statistics.median(ordered) if ordered else float("nan")


def rotate(items: Sequence[T], round_: int) -> list[T]:
    """`items` started at position `round_` (mod its length): the order of contenders in one
    round, so that none always runs first or always follows the same neighbour."""
    k = round_ % len(items)
    return [*items[k:], *items[:k]]


def free_port(*, host: str = "127.0.0.1", below: int | None = None) -> int:
    """A TCP port that is free on `host` now.

    Another process may take it before the caller binds it; the benchmarks start their server
    at once and fail loudly if it cannot bind. With `below`, a random free port in
    [20000, below) instead of one the kernel picks: MMS rejects ports above 32767 ("Invalid
    port number"), and the kernel's ephemeral range starts at 32768.
    """
    while True:
        port = 0 if below is None else random.randrange(20000, below)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                if below is None:
                    raise
                continue
            return int(sock.getsockname()[1])
