"""`flood.py N [--long BYTES]`: print N numbered lines to stdout as fast as possible.

Line i of rank r is `r<r> <i> ` + `x` * (i % 53). Lines are written in pieces that do not end
at line ends (so the launcher sees lines split across reads), then: one line of BYTES bytes
(with --long), a line holding non-UTF-8 bytes, and a last line with no newline. `expected()`
builds the same bytes for the test.
"""

import argparse
import os
import sys

BAD = b"bad bytes \xff\xfe\x80 end"


def expected(rank: int, n: int, long: int) -> list[bytes]:
    """The lines rank `rank` prints, without their newlines (the last one has none)."""
    lines = [f"r{rank} {i} ".encode() + b"x" * (i % 53) for i in range(n)]
    if long:
        lines.append(f"r{rank} long ".encode() + b"L" * long)
    return [*lines, BAD, f"partial tail of rank {rank}".encode()]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n", type=int)
    parser.add_argument("--long", type=int, default=0)
    args = parser.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    lines = expected(rank, args.n, args.long)
    data = b"\n".join(lines)
    step = 7919  # a prime: pieces end anywhere in a line
    view = memoryview(data)
    while view:
        written = os.write(1, view[:step])
        view = view[written:]
    sys.stderr.write(f"rank {rank} flooded {args.n} lines\n")


if __name__ == "__main__":
    main()
