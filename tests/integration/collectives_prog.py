"""A rank program for tests/integration/test_collectives.py: `python collectives_prog.py SCENARIO`.

Each scenario prints `RESULT <json>` lines that the test parses, and exits 0 unless the
scenario is about failing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import collectives


def emit(**fields: object) -> None:
    print("RESULT " + json.dumps(fields), flush=True)


def done() -> None:
    """Tell a late rank that this rank has its result (see `stay_late`)."""
    (Path(os.environ["DONE_DIR"]) / str(collectives.rank())).touch()


def stay_late() -> None:
    """Stay alive, away from the collective, until every other rank is done (deadline 20 s).

    Staying alive makes the peers see a timeout rather than a closed connection.
    """
    others = {str(r) for r in range(collectives.world_size())} - {str(collectives.rank())}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if others <= {p.name for p in Path(os.environ["DONE_DIR"]).iterdir()}:
            return
        time.sleep(0.05)
    raise TimeoutError("the other ranks never finished")


def ops() -> None:
    """Every collective, checked against what each rank can compute on its own."""
    env = collectives.init(timeout=30)
    r, n = collectives.rank(), collectives.world_size()
    assert dist.is_initialized() and dist.get_rank() == r and dist.get_world_size() == n
    total = collectives.all_reduce(torch.tensor([float(r + 1)]))
    mean = collectives.all_reduce(torch.tensor([float(r)], dtype=torch.float64), "mean")
    biggest = collectives.all_reduce(torch.tensor([r], dtype=torch.int64), collectives.ReduceOp.MAX)
    prod = collectives.all_reduce(torch.tensor([float(r + 1)]), "product")
    src = n - 1
    b = collectives.broadcast(torch.full((3,), float(r)), src=src)
    gathered = collectives.all_gather(torch.tensor([r, 10 * r]))
    collectives.barrier()
    order = Path(os.environ["ORDER_FILE"])
    with collectives.primary_first(), order.open("a") as f:  # append is atomic for short lines
        f.write(f"{r}\n")
    saved = collectives.save({"w": torch.arange(4)}, "state.pt")
    again = collectives.init()  # idempotent
    emit(
        rank=r,
        world=n,
        local_rank=collectives.local_rank(),
        local_world=collectives.local_world_size(),
        node_rank=collectives.node_rank(),
        primary=collectives.is_primary(),
        env_rank=env.rank,
        same_env=again is env,
        total=total.item(),
        mean=mean.item(),
        max=biggest.item(),
        prod=prod.item(),
        bcast=b.tolist(),
        src=src,
        gathered=[t.tolist() for t in gathered],
        saved=str(saved) if saved else None,
    )
    collectives.shutdown()
    collectives.shutdown()  # idempotent
    assert not dist.is_initialized()


def timeout() -> None:
    """The last rank skips one all_reduce; the others must time out naming it."""
    collectives.init(timeout=float(os.environ.get("TIMEOUT_S", "1.5")))
    r, n = collectives.rank(), collectives.world_size()
    if r == n - 1:
        stay_late()
        return
    try:
        collectives.all_reduce(torch.ones(4))
    except collectives.CollectiveTimeout as exc:
        emit(rank=r, op=exc.op, missing=exc.missing_ranks, message=str(exc))
    else:
        emit(rank=r, op=None)
    done()


def barrier_timeout() -> None:
    """Rank 1 never reaches the barrier; rank 0's error names it."""
    collectives.init(timeout=float(os.environ.get("TIMEOUT_S", "1.5")))
    r = collectives.rank()
    if r == 1:
        stay_late()
        return
    try:
        collectives.barrier()
    except collectives.CollectiveError as exc:
        kind = type(exc).__name__
        emit(rank=r, kind=kind, op=exc.op, missing=exc.missing_ranks, message=str(exc))
    else:
        emit(rank=r, kind=None)
    done()


def peer_dies() -> None:
    """Rank 1 exits abruptly; rank 0's all_reduce fails and it exits without `shutdown`."""
    collectives.init(timeout=30)
    if collectives.rank() == 1:
        os._exit(3)
    try:
        collectives.all_reduce(torch.ones(4))
    except collectives.CollectiveError as exc:
        emit(rank=0, kind=type(exc).__name__, op=exc.op, message=str(exc))


@collectives.record
def fail() -> None:
    """Rank 1 raises inside `record`; the error file must hold it."""
    collectives.init(timeout=30)
    if collectives.rank() == 1:
        raise ValueError("boom from rank 1")
    collectives.shutdown()


def main() -> None:
    programs = {
        "ops": ops,
        "timeout": timeout,
        "barrier_timeout": barrier_timeout,
        "peer_dies": peer_dies,
        "fail": fail,
    }
    programs[sys.argv[1]]()


if __name__ == "__main__":
    main()
