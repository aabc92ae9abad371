"""The raw progress protocol of docs/hangs.md, written out by hand: `python progress_raw.py N`.

No import from this project: a program in any environment (another Python, no launcher
package) can report progress like this. It counts N units, announces itself in $READY_DIR,
then waits until killed. Keep this in step with the snippet in docs/hangs.md.
"""

from __future__ import annotations

import mmap
import os
import sys
import time

from _common import ready, sleep_forever


def attach() -> memoryview | None:
    """The progress file's words (unsigned 64-bit, host byte order), or None when not launched
    with one. The launcher created the file: 128 bytes starting with b"mlprog01"."""
    path = os.environ.get("LAUNCHER_PROGRESS_FILE")
    if not path:
        return None
    fd = os.open(path, os.O_RDWR)
    try:
        mapped = mmap.mmap(fd, 128)
    finally:
        os.close(fd)
    if mapped[:8] != b"mlprog01":
        return None
    words = memoryview(mapped).cast("Q")
    words[5] = os.getpid()  # who to ask for stacks
    words[7] = time.monotonic_ns()  # attached
    return words


def main() -> int:
    words = attach()
    assert words is not None
    for _ in range(int(sys.argv[1])):
        words[1] += 1  # the count ...
        words[2] = time.monotonic_ns()  # ... and when
    ready(stage="ticked")
    sleep_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
