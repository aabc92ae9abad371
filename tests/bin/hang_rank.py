"""A gloo rank for the hang tests: `python hang_rank.py SCENARIO [--stuck R] [--at N]`.

Every rank joins through `collectives.init` (which attaches the progress file and installs the
stack dump) and then, by scenario:

* `sleep`: all_reduce in a loop; rank `--stuck` sleeps instead of joining the `--at`-th one,
  so the others wait in it.
* `spin`: the same, but the stuck rank spins in a pure-Python loop (holding the GIL).
* `steady`: all_reduce forever with a little work between: slow, but always progressing.
* `long_step`: one long step without a collective that calls `collectives.progress()`.
* `section`: rank 0 stays in `collectives.section("save")` while the others wait in a barrier.
* `late_init`: rank `--stuck` starts `--late` seconds after the others (a slow host's start-up)
  while they wait in the rendezvous; then every rank runs a few all_reduce and exits 0.

Before it stalls (or starts its endless loop) a rank announces itself in $READY_DIR with the
stage it reached; tests poll for that and for the progress files, never sleep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from _common import ready

import collectives


def stall() -> None:
    """Where a stuck rank sleeps: the innermost frame the tests expect."""
    while True:
        time.sleep(3600)


def spin() -> int:
    """Where a stuck rank spins without ever releasing the GIL for long."""
    n = 0
    while True:
        n += 1
        if n < 0:  # never: keeps the loop pure Python
            return n


def step(x: torch.Tensor) -> torch.Tensor:
    return collectives.all_reduce(x)


def stuck(args: argparse.Namespace, how: str) -> None:
    x = torch.ones(4)
    for i in range(1, args.at):
        step(x)
        ready(stage=f"reduced {i}")
    if collectives.rank() == args.stuck:
        ready(stage="stuck")
        if how == "sleep":
            stall()
        else:
            spin()
    ready(stage="waiting")
    step(x)  # the others wait here for the stuck rank


def steady() -> None:
    x = torch.ones(64)
    ready(stage="steady")
    while True:
        sum(range(20_000))  # a little work, so that progress comes at a steady pace
        step(x)


def long_step() -> None:
    ready(stage="long step")
    n = 0
    while True:  # one step that never ends but keeps saying it is alive
        n += 1
        if n % 10_000 == 0:
            collectives.progress()


def section() -> None:
    if collectives.rank() == 0:
        with collectives.section("save"):
            ready(stage="in section")
            stall()
    ready(stage="barrier")
    collectives.barrier()


def late_init(args: argparse.Namespace) -> int:
    """The scenario, not a synchronisation: this rank's start-up is slow on purpose."""
    if int(os.environ["RANK"]) == args.stuck:
        time.sleep(args.late)
    collectives.init("gloo", timeout=300)
    x = torch.ones(4)
    for _ in range(3):
        collectives.all_reduce(x)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "scenario", choices=["sleep", "spin", "steady", "long_step", "section", "late_init"]
    )
    parser.add_argument("--stuck", type=int, default=1)
    parser.add_argument("--at", type=int, default=4)
    parser.add_argument("--late", type=float, default=0.0)
    args = parser.parse_args()
    if args.scenario == "late_init":
        return late_init(args)
    collectives.init("gloo", timeout=300)
    if args.scenario in ("sleep", "spin"):
        stuck(args, args.scenario)
    elif args.scenario == "steady":
        steady()
    elif args.scenario == "long_step":
        long_step()
    else:
        section()
    return 0


if __name__ == "__main__":
    sys.exit(main())
