"""An mpi4py job for the MPI backend tests: every rank reports what it sees; rank 0 gathers.

Rank 0 writes one JSON list (one object per rank, in rank order) to `--out`: the MPI rank and
size, the UTS host name, and the variables the launcher promises each rank (its own host's
SM_* values, the torch contract, the job-wide `-x` variables). `--fail-rank R --code C` makes
rank R exit with code C after the gather, to drive the failure path; `--sleep S` keeps every
rank alive S seconds after the gather.
"""

import argparse
import json
import os
import socket
import sys
import time

from mpi4py import MPI

SHOWN = (
    "SM_CURRENT_HOST",
    "SM_HOSTS",
    "SM_NUM_GPUS",
    "SM_NUM_CPUS",
    "SM_HP_EPOCHS",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "LAUNCHER_HOST",
    "LAUNCHER_BACKEND",
    "NCCL_DEBUG",
    "NCCL_SOCKET_IFNAME",
    "MPI_TEST_VALUE",
    "MPI_TEST_HOST_ONLY",
    "OMP_NUM_THREADS",
    "PYTHONPATH",
)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--epochs", default="")
    parser.add_argument("--fail-rank", type=int, default=-1)
    parser.add_argument("--code", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    comm = MPI.COMM_WORLD
    mine = {
        "mpi_rank": comm.Get_rank(),
        "mpi_size": comm.Get_size(),
        "hostname": socket.gethostname(),
        "argv": sys.argv[1:],
        "env": {k: os.environ.get(k) for k in SHOWN},
    }
    everyone = comm.gather(mine, root=0)
    if comm.Get_rank() == 0:
        with open(args.out + ".tmp", "w", encoding="utf-8") as f:
            json.dump(everyone, f, indent=1)
        os.replace(args.out + ".tmp", args.out)
    comm.Barrier()
    time.sleep(args.sleep)  # a long job, for the signal tests
    if comm.Get_rank() == args.fail_rank:
        print(f"rank {args.fail_rank} fails on purpose", file=sys.stderr, flush=True)
        return int(args.code)
    return 0


if __name__ == "__main__":
    sys.exit(main())
