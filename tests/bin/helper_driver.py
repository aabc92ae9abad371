"""`helper_driver.py stop|hold`: a launcher-shaped process around one `procs.Helper`.

Inside `app.guarded` (the watchdog, the child subreaper and the job's cgroup unless
LAUNCHER_CGROUP=off: what every launcher command sets up before it starts anything) it runs a
helper whose program escapes its process group: it ignores SIGTERM and leaves a double-forked
daemon in a session of its own, which ignores SIGTERM too. Reports are JSON lines on stdout:

- `stop`: {"armed": [helper, daemon]}; after `Helper.stop` {"left": [pids still alive]}; the
  same again for a second `start` and `Helper.close`; then {"closed": "<SpawnError>"} for a
  `start` after the close; exit 0.
- `hold`: {"armed": [helper, daemon]}, then it waits to be killed (the watchdog's case).

Run with the repository on PYTHONPATH (the tests' `launch(command=...)` does).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
from pathlib import Path

from launcher import app, containment, procs
from launcher.errors import SpawnError
from tests.helpers.waiting import wait_for

ESCAPING = """
import os, signal, sys
signal.signal(signal.SIGTERM, signal.SIG_IGN)
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.write(w, str(os.getpid()).encode())
        while True:
            signal.pause()
    os._exit(0)
os.wait()
daemon = os.read(r, 32).decode()
print(f"armed {os.getpid()} {daemon}", file=sys.stderr, flush=True)
while True:
    signal.pause()
"""


def report(**what: object) -> None:
    print(json.dumps(what), flush=True)


def start(helper: procs.Helper) -> list[int]:
    """Start it, wait for its program's announcement, report (helper, daemon)."""
    helper.start()
    wait_for(
        lambda: "armed" in helper.log_tail(),
        30.0,
        "the helper to arm",
        stop_if=lambda: None if helper.running() else f"it exited: {helper.log_tail()!r}",
    )
    pids = [int(p) for p in helper.log_tail().split()[-2:]]
    report(armed=pids)
    return pids


def main(mode: str) -> int:
    environ = dict(os.environ)
    with app.guarded(dry_run=False, environ=environ, host="driver", grace_s=1.0) as scope:
        argv = [sys.executable, "-c", ESCAPING]
        helper = procs.Helper(
            "driver helper", argv, Path.cwd(), environ, queue.SimpleQueue(), scope=scope
        )
        pids = start(helper)
        if mode == "hold":
            while True:
                signal.pause()
        helper.stop(0.2)
        report(left=sorted(containment.alive(pids)))
        pids = start(helper)
        helper.close(0.2)
        report(left=sorted(containment.alive(pids)))
        try:
            helper.start()
        except SpawnError as e:
            report(closed=str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
