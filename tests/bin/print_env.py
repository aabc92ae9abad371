"""Write what this rank received to $OUT_DIR/rank-<RANK>.json: environment, ids, stdin, argv."""

import os
import sys

import _common

stdin_target = os.readlink("/proc/self/fd/0") if os.path.exists("/proc/self/fd/0") else ""
stdin_read = os.read(0, 16).decode("latin-1")  # /dev/null reads as EOF at once
record = {
    "env": dict(os.environ),
    "argv": sys.argv,
    "cwd": os.getcwd(),
    "pid": os.getpid(),
    "pgid": os.getpgrp(),
    "sid": os.getsid(0),
    "stdin": stdin_target,
    "stdin_read": stdin_read,
}
_common.write_json(os.path.join(os.environ["OUT_DIR"], f"rank-{_common.rank()}.json"), record)
