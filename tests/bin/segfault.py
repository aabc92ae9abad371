"""`segfault.py [--rank R]`: rank R dies of SIGSEGV (others sleep until stopped)."""

import argparse
import os
import resource
import signal

import _common

parser = argparse.ArgumentParser()
parser.add_argument("--rank", type=int, default=None)
args = parser.parse_args()
_common.ready()
if args.rank is not None and _common.rank() != args.rank:
    _common.sleep_forever()
if os.environ.get("READY_DIR"):
    _common.wait_all_ready()
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test's folder
signal.signal(signal.SIGSEGV, signal.SIG_DFL)
os.kill(os.getpid(), signal.SIGSEGV)
