"""What every benchmark does first."""

from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def byte_compile() -> None:
    """Write the .pyc files of the project's packages.

    Where PYTHONDONTWRITEBYTECODE=1 is set (it is on our machines), a module changed since its
    .pyc was written is compiled again at every interpreter start, which would be timed as the
    launcher's start-up.
    """
    for package in ("launcher", "collectives", "serving"):
        compileall.compile_dir(ROOT / package, quiet=1)
