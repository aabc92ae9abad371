"""A small Horovod DistributedOptimizer training run (torch, CPU) for the backend tests.

Every rank trains the same linear model on its own shard for `--steps` SGD steps with
`hvd.DistributedOptimizer`, after broadcasting the initial parameters and optimizer state. At
the end the final weights of every rank are allgathered: they must be identical. Rank 0 writes
a JSON object to `--out`: Horovod's size, each rank's (rank, local rank/size, cross rank/size,
host name), whether the weights agree, and the loss before and after training.
`--fail-rank R` makes rank R die with exit code 3 after the first step (the failure path);
with `--fail-attempts N` only in the job's attempts below N (TORCHELASTIC_RESTART_COUNT), so
that a restarted job trains to the end. Every rank records its attempt and the rendezvous
port it was given in `--out`.start-<attempt>-<rank>.json.
"""

import argparse
import json
import os
import socket
import sys

import horovod.torch as hvd
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--fail-attempts", type=int, default=0, help="0: every attempt")
    args = parser.parse_args()
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    fails = args.fail_attempts == 0 or attempt < args.fail_attempts
    hvd.init()
    start = {"attempt": attempt, "port": os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT")}
    with open(f"{args.out}.start-{attempt}-{hvd.rank()}.json", "w", encoding="utf-8") as f:
        json.dump(start, f)
    torch.manual_seed(1234 + hvd.rank())  # different starting points: broadcast must fix them
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    opt = hvd.DistributedOptimizer(opt, named_parameters=model.named_parameters())
    gen = torch.Generator().manual_seed(hvd.rank())
    x = torch.randn(64, 4, generator=gen)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
    losses = []
    for step in range(args.steps):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()  # type: ignore[no-untyped-call]  # torch leaves Tensor.backward untyped
        opt.step()
        losses.append(float(hvd.allreduce(loss.detach(), name="loss")))
        if step == 0 and hvd.rank() == args.fail_rank and fails:
            # Die at once, as a crash would: a raise would run Horovod's shutdown at exit,
            # and the peers' "Horovod has been shut down" errors could end them first.
            print(f"RuntimeError: rank {hvd.rank()} fails on purpose", file=sys.stderr, flush=True)
            os._exit(3)
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    every = hvd.allgather(flat.unsqueeze(0))
    me = [
        hvd.rank(),
        hvd.local_rank(),
        hvd.local_size(),
        hvd.cross_rank(),
        hvd.cross_size(),
        socket.gethostname(),
        os.environ.get("SM_CURRENT_HOST"),
    ]
    ranks = hvd.allgather_object(me)
    if hvd.rank() == 0:
        result = {
            "size": hvd.size(),
            "ranks": ranks,
            "weights_agree": bool(torch.allclose(every, every[0].expand_as(every))),
            "losses": losses,
            "controller": "mpi" if hvd.mpi_enabled() else "gloo",
        }
        with open(args.out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    hvd.shutdown()


if __name__ == "__main__":
    main()
