"""`spawn_grandchild.py [--exit N [--rank R] [--stamp FILE]] [--others-ignore-term]`.

Every rank starts a child that ignores SIGTERM and stays in the rank's process group (what
DataLoader workers do), then announces itself with `child` = the child's pid once the child has
its SIGTERM disposition in place. With `--exit N`, rank R (every rank when R is not given)
waits until all ranks are ready, writes `time.monotonic()` to FILE and exits with N, leaving
its child behind; the other ranks sleep until stopped, ignoring SIGTERM themselves with
`--others-ignore-term`.
"""

import argparse
import signal
import subprocess
import sys
import time

import _common

CHILD = (
    "import signal, sys\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('armed', flush=True)\n"
    "sys.stdout.close()\n"
    "while True: signal.pause()\n"
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--stamp", default="")
    parser.add_argument("--others-ignore-term", action="store_true")
    args = parser.parse_args()
    exits = args.exit is not None and args.rank in (None, _common.rank())
    if not exits and args.others_ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE)
    assert child.stdout is not None
    if child.stdout.readline() != b"armed\n":
        return 90
    _common.ready(child=child.pid)
    if not exits:
        _common.sleep_forever()
    _common.wait_all_ready()
    if args.stamp:
        with open(args.stamp, "w", encoding="utf-8") as f:
            f.write(repr(time.monotonic()))
    return int(args.exit)


if __name__ == "__main__":
    sys.exit(main())
