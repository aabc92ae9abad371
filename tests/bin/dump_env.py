#!/usr/bin/env python3
"""Dump what a launched user program received, for comparing launchers side by side.

Writes one JSON object to the path in `$DUMP_OUT` (the test sets it in the launcher's
environment, so it is inherited): `argv` (sys.argv), `orig_argv` (the interpreter's argv, to
see `--` and `-m`), `cwd`, `env` (the whole os.environ), `executable`, and `marker` (the
basename of argv[0], to tell which of several copies ran).

Then, to drive failure paths, in this order and only when set:
`$DUMP_FAILURE_TEXT` is written to `$SM_OUTPUT_DIR/failure` (a user-written failure file);
`$DUMP_WAIT_TERM` makes it wait for SIGTERM, write `$DUMP_OUT.term` and exit 143;
`$DUMP_SIGNAL=N` makes it kill itself with signal N; `$DUMP_RAISE=text` raises
ValueError(text); `$DUMP_EXIT=N` is its exit code (default 0).

Standard library only: it runs under the toolkit's interpreter, ours, and `/usr/bin/python3`.
"""

import json
import os
import signal
import sys


def _on_term(signum: int, frame: object) -> None:
    with open(os.environ["DUMP_OUT"] + ".term", "w", encoding="utf-8") as f:
        f.write("got SIGTERM\n")
    sys.exit(128 + signum)


def main() -> int:
    out = os.environ["DUMP_OUT"]
    record = {
        "argv": sys.argv,
        "orig_argv": getattr(sys, "orig_argv", []),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "executable": sys.executable,
        "marker": os.path.basename(sys.argv[0]),
    }
    if os.environ.get("DUMP_WAIT_TERM"):
        signal.signal(signal.SIGTERM, _on_term)  # before the dump: the test waits for it
    with open(out + ".tmp", "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(out + ".tmp", out)  # whole or absent: never a half-written dump
    if os.environ.get("DUMP_FAILURE_TEXT"):
        failure = os.path.join(os.environ["SM_OUTPUT_DIR"], "failure")
        with open(failure, "w", encoding="utf-8") as f:
            f.write(os.environ["DUMP_FAILURE_TEXT"])
    if os.environ.get("DUMP_WAIT_TERM"):
        while True:
            signal.pause()
    if os.environ.get("DUMP_SIGNAL"):
        os.kill(os.getpid(), int(os.environ["DUMP_SIGNAL"]))
    if os.environ.get("DUMP_RAISE"):
        raise ValueError(os.environ["DUMP_RAISE"])
    return int(os.environ.get("DUMP_EXIT", "0"))


if __name__ == "__main__":
    sys.exit(main())
