"""`escape.py [--exit N] [--ignore-term]`: a rank that leaves processes its group cannot reach.

Each rank starts two processes that a process-group kill misses, then announces their pids
with `_common.ready(session=..., daemon=...)`:

* `session`: a child in a session of its own (`subprocess.Popen(start_new_session=True)`),
  still the rank's child;
* `daemon`: a classic double-forked daemon (fork, setsid, fork, the middle process exits), an
  orphan re-parented to the nearest subreaper.

With `--ignore-term` both ignore SIGTERM (only SIGKILL ends them). With `--exit N` the rank
then exits with N at once, leaving both behind; without it the rank sleeps until stopped.
"""

import argparse
import os
import signal
import subprocess
import sys

import _common

SLEEPER = (
    "import signal, sys\n"
    "if sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('armed', flush=True)\n"
    "sys.stdout.close()\n"
    "while True: signal.pause()\n"
)


def session_child(ignore_term: bool) -> int:
    child = subprocess.Popen(
        [sys.executable, "-c", SLEEPER, str(int(ignore_term))],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    assert child.stdout is not None
    if child.stdout.readline() != b"armed\n":
        raise SystemExit(90)
    return child.pid


def daemon(ignore_term: bool) -> int:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the middle process
        os.close(read_fd)
        os.setsid()
        if os.fork() == 0:  # the daemon
            if ignore_term:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.write(write_fd, f"{os.getpid()}\n".encode())
            os.close(write_fd)
            while True:
                signal.pause()
        os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)  # the middle process is gone: the daemon is an orphan now
    with os.fdopen(read_fd) as f:
        return int(f.readline())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--exit", type=int, default=None)
    parser.add_argument("--ignore-term", action="store_true")
    args = parser.parse_args()
    _common.ready(session=session_child(args.ignore_term), daemon=daemon(args.ignore_term))
    if args.exit is None:
        _common.sleep_forever()
    _common.wait_all_ready()
    return int(args.exit)


if __name__ == "__main__":
    sys.exit(main())
