"""Record every forwarded signal this rank gets in $SIG_DIR/rank-<RANK>.log, one name a line.

SIGUSR1 and SIGUSR2 are recorded and the rank carries on; SIGTERM, SIGINT and SIGHUP are
recorded and the rank exits with 128 + N, as a well-behaved training script would.
"""

import os
import signal
import sys

import _common

STOPS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
LOG = os.path.join(os.environ["SIG_DIR"], f"rank-{_common.rank()}.log")


def handler(signum: int, frame: object) -> None:
    with open(LOG, "a", encoding="utf-8") as f:
        f.write(signal.Signals(signum).name + "\n")
    if signum in STOPS:
        sys.exit(128 + signum)


for sig in (*STOPS, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, handler)
_common.ready()
_common.sleep_forever()
