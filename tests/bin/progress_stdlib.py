"""A rank that reports progress without torch: `python progress_stdlib.py N`.

It uses only `launcher.contract` (standard library): installs the stack dump, counts N units
of progress, announces itself in $READY_DIR (with whether torch got imported), then sleeps
in `stall` until killed.
"""

from __future__ import annotations

import sys
import time

from _common import ready

from launcher import contract


def stall() -> None:
    while True:
        time.sleep(3600)


def main() -> int:
    signum = contract.install_stack_dump()
    for _ in range(int(sys.argv[1])):
        contract.progress()
    ready(stage="ticked", torch="torch" in sys.modules, signal=signum)
    stall()
    return 0


if __name__ == "__main__":
    sys.exit(main())
