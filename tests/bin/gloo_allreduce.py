"""A real torch.distributed job: gloo all_reduce of (rank + 1) through `env://`.

Prints `allreduce rank R world W sum S` and exits 0 when S = W (W + 1) / 2, else 1.
"""

import os
import sys

import torch
import torch.distributed as dist


def main() -> int:
    dist.init_process_group("gloo", init_method="env://")
    rank, world = dist.get_rank(), dist.get_world_size()
    assert rank == int(os.environ["RANK"]) and world == int(os.environ["WORLD_SIZE"])
    tensor = torch.tensor([float(rank + 1)])
    dist.all_reduce(tensor)
    total = int(tensor.item())
    dist.barrier()
    dist.destroy_process_group()
    print(f"allreduce rank {rank} world {world} sum {total}", flush=True)
    return 0 if total == world * (world + 1) // 2 else 1


if __name__ == "__main__":
    sys.exit(main())
