"""`exit_code.py N [--rank R] [--stamp FILE] [--others-ignore-term]`: exit with code N.

With `--rank R` only rank R exits; every other rank announces itself and sleeps until it is
stopped (only SIGKILL stops it with `--others-ignore-term`). The failing rank first waits until
every rank is ready (when $READY_DIR is set), so the failure happens in a running job, then
writes `time.monotonic()` (system-wide on Linux, so comparable across processes) to FILE just
before it exits: the benchmark's start of teardown.
"""

import argparse
import os
import signal
import sys
import time

import _common


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("code", type=int)
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--stamp", default="")
    parser.add_argument("--others-ignore-term", action="store_true")
    args = parser.parse_args()
    others = args.rank is not None and _common.rank() != args.rank
    if others and args.others_ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _common.ready()
    if others:
        _common.sleep_forever()
    if os.environ.get("READY_DIR"):
        _common.wait_all_ready()
    print(f"rank {_common.rank()} exits with {args.code}", file=sys.stderr, flush=True)
    if args.stamp:
        with open(args.stamp, "w", encoding="utf-8") as f:
            f.write(repr(time.monotonic()))
    return int(args.code)


if __name__ == "__main__":
    sys.exit(main())
