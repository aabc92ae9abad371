"""The demo job: a small MLP learns a noisy nonlinear regression with DDP, through `collectives`.

The data set is generated here, deterministically from `--seed`, so the job needs no download
and every rank builds the same one; each rank trains on its own shard (DistributedSampler).
The primary rank prints the mean training loss of each epoch (averaged over all ranks) and
the validation loss at the end, then saves the model as TorchScript to `<model_dir>/model.pt`
together with `code/inference.py`, the serving hooks, so `serve` can host it.

Run it alone (a world of one), or under the launcher:

    python examples/train_regression.py --epochs 5
    launcher local --hosts 2 --nproc-per-host 2 examples/train_regression.py

Restarts (docs/usage.md "Restarts"): with `--checkpoint-every K` the primary rank saves a
checkpoint (model, optimiser, epoch) every K epochs and every rank resumes from the latest one
at start; `--fail-once-at E` makes the last rank fail in epoch E of the job's first attempt
(TORCHELASTIC_RESTART_COUNT 0), so that

    launcher local --hosts 2 --nproc-per-host 2 --max-restarts 1 examples/train_regression.py \
        --epochs 6 --checkpoint-every 1 --fail-once-at 4

fails once mid-training, comes back by itself and finishes, the loss going on from the
checkpoint where it stopped.

Hyperparameters arrive as `--name value` (SageMaker's rendering); unknown ones are ignored.
On CPU it uses gloo, with GPUs nccl (each rank on its local GPU); a few seconds of compute.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import collectives

FEATURES = 8


def make_dataset(samples: int, seed: int) -> tuple[TensorDataset, TensorDataset]:
    """(train, validation): y = x.w + 0.5 sin(2 x0) + noise; the last tenth is validation."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, FEATURES, generator=g)
    w = torch.randn(FEATURES, 1, generator=g) / FEATURES**0.5
    y = x @ w + 0.5 * torch.sin(2 * x[:, :1]) + 0.05 * torch.randn(samples, 1, generator=g)
    cut = samples - samples // 10
    return TensorDataset(x[:cut], y[:cut]), TensorDataset(x[cut:], y[cut:])


class Regressor(nn.Module):
    """FEATURES -> hidden -> hidden -> 1."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(FEATURES, hidden),
            nn.Tanh(),
            nn.Linear(hidden, hidden),
            nn.Tanh(),
            nn.Linear(hidden, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--samples", type=int, default=4096)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="steps per epoch cap (0: none)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="epochs (0: no checkpoints)")
    p.add_argument("--fail-once-at", type=int, default=0, help="epoch to fail in once (0: none)")
    args, _unknown = p.parse_known_args(argv)
    return args


def train(args: argparse.Namespace) -> float:
    """Train; return the final epoch's mean training loss (every rank returns the same)."""
    train_set, val_set = make_dataset(args.samples, args.seed)
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        train_set,
        num_replicas=collectives.world_size(),
        rank=collectives.rank(),
        shuffle=True,
        seed=args.seed,
    )
    loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler)
    torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP also broadcasts)
    model = Regressor(args.hidden)
    cuda = torch.cuda.is_available()
    # `collectives.init` already made this rank's GPU the current device.
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    model = model.to(device)
    ddp: nn.Module = model
    if collectives.world_size() > 1:
        ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    optimiser = torch.optim.Adam(ddp.parameters(), lr=args.lr)
    loss_fn = nn.MSELoss()
    mean_loss = float("nan")
    first = 0
    if args.checkpoint_every:
        resumed = collectives.load_latest()  # every rank: the primary's latest, broadcast
        if resumed is not None:
            model.load_state_dict(resumed.data["model"])
            optimiser.load_state_dict(resumed.data["optimiser"])
            first = resumed.step + 1
            if collectives.is_primary():
                print(f"resumed from the checkpoint of epoch {first}", flush=True)
    for epoch in range(first, args.epochs):
        if (
            epoch + 1 == args.fail_once_at
            and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
            and collectives.rank() == collectives.world_size() - 1
        ):
            raise RuntimeError(f"injected failure in epoch {epoch + 1} (--fail-once-at)")
        sampler.set_epoch(epoch)
        started = time.perf_counter()
        totals = torch.zeros(2, dtype=torch.float64)  # (sum of losses, samples) on this rank
        for step, (x, y) in enumerate(loader):
            if args.max_steps and step >= args.max_steps:
                break
            optimiser.zero_grad()
            loss = loss_fn(ddp(x.to(device)), y.to(device))
            loss.backward()
            optimiser.step()
            totals += torch.tensor([loss.item() * len(x), len(x)], dtype=torch.float64)
        collectives.all_reduce(totals)
        mean_loss = float(totals[0] / totals[1])
        if collectives.is_primary():
            took = time.perf_counter() - started
            print(
                f"epoch {epoch + 1}/{args.epochs} loss {mean_loss:.5f} ({took:.2f} s)", flush=True
            )
        if args.checkpoint_every and (epoch + 1) % args.checkpoint_every == 0:
            state = {"model": model.state_dict(), "optimiser": optimiser.state_dict()}
            collectives.save_checkpoint(state, epoch, keep=2)
    if collectives.is_primary():
        model.eval()
        with torch.no_grad():
            x, y = val_set.tensors
            val = loss_fn(model(x.to(device)).cpu(), y).item()
        print(f"validation loss {val:.5f}", flush=True)
        scripted = torch.jit.script(model.cpu())
        path = collectives.save(scripted, "model.pt")
        collectives.save_file(Path(__file__).with_name("inference.py"), "code/inference.py")
        print(f"saved {path} and code/inference.py", flush=True)
    return mean_loss


@collectives.record
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    collectives.init()
    if collectives.is_primary():
        print(
            f"training on {collectives.world_size()} rank(s), "
            f"{args.samples} samples, {args.epochs} epochs",
            flush=True,
        )
    try:
        train(args)
    finally:
        collectives.shutdown()


if __name__ == "__main__":
    main()
