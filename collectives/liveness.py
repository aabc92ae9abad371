"""Progress for the launcher's hang detection, and stacks it can ask for without ptrace.

Every collective counts as progress (`ops` calls `progress` on the way in), and so does
`progress()` itself, for a long step with no collective in it. `section(name)` pauses hang
timing while its body runs; `collectives.save` writes inside one. `attach`, which `init`
calls, maps the progress file and installs the stack dump: on the launcher's stack signal
every thread's Python stack is appended to the rank's stack file (see
`launcher.contract.install_stack_dump`).

All of it is the stdlib implementation in `launcher.contract`, shared with scripts that do
not import torch; without our launcher (no `LAUNCHER_PROGRESS_FILE`) every call is a no-op.
The protocol is in docs/hangs.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from launcher import contract
from launcher.contract import progress

__all__ = ["attach", "progress", "section"]


def attach() -> None:
    """Attach this rank's progress file and install the stack dump (both idempotent, both
    silent no-ops outside our launcher; a file that cannot be used is said once on stderr)."""
    contract.attach_progress()
    contract.install_stack_dump()


@contextmanager
def section(name: str = "section") -> Iterator[None]:
    """Pause hang timing while the body runs (a checkpoint, an evaluation without collectives).

    Leaving the section counts as progress. Sections nest. The launcher still bounds how long
    one may last (docs/hangs.md), so a write that never returns is found too.
    """
    with contract.progress_section(name):
        yield
