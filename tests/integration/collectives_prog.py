"""A rank program for tests/integration/test_collectives*.py: `python collectives_prog.py SCENARIO`.

Each scenario prints `RESULT <json>` lines that the test parses, and exits 0 unless the
scenario is about failing. `exit_jobs` is not a rank but a runner of many small jobs (see
there).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

import collectives
from launcher.contract import RankEnv


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
        # Only once rank 0 is through `init`: that rank 1's `init` returned does not mean that
        # rank 0's half of the rendezvous is done, and a peer that dies during it fails `init`.
        stay_late()
        os._exit(3)
    done()
    try:
        collectives.all_reduce(torch.ones(4))
    except collectives.CollectiveError as exc:
        emit(rank=0, kind=type(exc).__name__, op=exc.op, message=str(exc))


ENDINGS = ("return", "exit", "raise", "ok")


def ending() -> None:
    """`ending NAME`: rank 0 of an `exit_jobs` job, a new interpreter like any launched rank.

    With "return", "exit" and "raise" the peer exits (code 3) as soon as its `init` returns,
    as in `peer_dies`, so this rank's all_reduce, or `init` while it still meets the peer,
    raises `CollectiveError`. "return": caught, and the rank returns without `shutdown`
    (exit 0). "exit": caught, then `sys.exit(5)`. "raise": not caught (traceback, exit 1).
    "ok": both ranks all_reduce; this one returns without `shutdown` (exit 0).
    """
    name = sys.argv[2]
    if name == "ok":
        collectives.init(timeout=30)
        collectives.all_reduce(torch.ones(4))
        return
    if name == "raise":
        collectives.init(timeout=30)
        collectives.all_reduce(torch.ones(4))
    try:
        collectives.init(timeout=30)
        collectives.all_reduce(torch.ones(4))
    except collectives.CollectiveError:
        if name == "exit":
            sys.exit(5)


def _peer(name: str) -> None:
    """Rank 1 of an `exit_jobs` job, in a forked child: it must not return into the runner."""
    collectives.init(timeout=30)
    if name != "ok":
        os._exit(3)
    collectives.all_reduce(torch.ones(4))
    collectives.shutdown()
    os._exit(0)


def _rank_env(rank: int, port: int, prefix: Path) -> dict[str, str]:
    """The torchrun environment of `rank` of 2 on one host."""
    place = RankEnv(
        rank=rank,
        local_rank=rank,
        world_size=2,
        local_world_size=2,
        node_rank=0,
        num_nodes=1,
        master_addr="127.0.0.1",
        master_port=port,
        error_file=f"{prefix}.error.json",
        host="algo-1",
    )
    return place.torch_env()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_job(out_dir: Path, job: int, name: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start job `job`: rank 0 as a new interpreter, rank 1 forked from this process."""
    port = _free_port()
    prefix = out_dir / f"job{job}-rank0"
    with open(f"{prefix}.out", "wb") as out, open(f"{prefix}.err", "wb") as err:
        survivor = subprocess.Popen(
            [sys.executable, __file__, "ending", name],
            env={**os.environ, **_rank_env(0, port, prefix)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        try:
            prefix = out_dir / f"job{job}-rank1"
            for fd, suffix in ((1, "out"), (2, "err")):
                target = os.open(f"{prefix}.{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(target, fd)
                os.close(target)
            os.environ.update(_rank_env(1, port, prefix))
            _peer(name)
        finally:
            os._exit(1)  # never return into the runner's loop
    return survivor, pid


def exit_jobs() -> None:
    """`exit_jobs OUT_DIR JOBS PARALLEL ENDING[,ENDING...]`: many two-rank jobs; each ends so.

    Job i ends as the (i mod n)th ending given (see `ending`); PARALLEL jobs run at a time.
    Rank 0, the one whose exit is under test, is a new interpreter running `ending`, exactly
    as a launched rank; rank 1 is forked from this process, which has imported torch already,
    so a job costs one import of torch rather than two. Prints one line per job:
    `JOB {"job": i, "ending": name, "codes": [rank 0's, rank 1's]}`, a code being the exit
    status or -N for a death by signal N. Output goes to OUT_DIR/job<i>-rank<r>.out/.err.
    """
    out_dir, jobs, parallel = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    names = sys.argv[5].split(",")
    if set(names) - set(ENDINGS):
        raise SystemExit(f"unknown endings {names}; use {list(ENDINGS)}")
    for first in range(0, jobs, parallel):
        batch = range(first, min(first + parallel, jobs))
        started = [_start_job(out_dir, job, names[job % len(names)]) for job in batch]
        for job, (survivor, pid) in zip(batch, started, strict=True):
            try:
                code = survivor.wait(timeout=60)
            except subprocess.TimeoutExpired:
                survivor.kill()
                code = survivor.wait()
            peer = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            name = names[job % len(names)]
            print("JOB " + json.dumps({"job": job, "ending": name, "codes": [code, peer]}))
            sys.stdout.flush()


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
        "ending": ending,
        "exit_jobs": exit_jobs,
    }
    programs[sys.argv[1]]()


if __name__ == "__main__":
    main()
