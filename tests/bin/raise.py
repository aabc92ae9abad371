"""`raise.py [--rank R] [--message M] [--after TEXT]`: raise RuntimeError(M) on rank R.

Every other rank announces itself and sleeps until it is stopped; the failing rank waits until
every rank is ready (when $READY_DIR is set). `--after TEXT` is printed to stderr after the
traceback has been printed (at exit), as libraries that log at shutdown do. `--record MSG`
first writes MSG to $TORCHELASTIC_ERROR_FILE in torch's `@record` format, so that the file and
the stderr tail disagree and a test can tell which one the launcher read.
"""

import argparse
import atexit
import os
import sys

import _common


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, default=None)
    parser.add_argument("--message", default="something went wrong")
    parser.add_argument("--after", default="")
    parser.add_argument("--record", default="")
    args = parser.parse_args()
    _common.ready()
    if args.rank is not None and _common.rank() != args.rank:
        _common.sleep_forever()
    if os.environ.get("READY_DIR"):
        _common.wait_all_ready()
    if args.after:
        atexit.register(lambda: print(args.after, file=sys.stderr, flush=True))
    if args.record:
        payload = {
            "message": {
                "message": args.record,
                "extraInfo": {"py_callstack": "recorded traceback\n", "timestamp": "1"},
            }
        }
        _common.write_json(os.environ["TORCHELASTIC_ERROR_FILE"], payload)
    print(f"rank {_common.rank()} about to fail", flush=True)
    raise RuntimeError(args.message)


if __name__ == "__main__":
    main()
