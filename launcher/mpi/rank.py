"""`python -m launcher.mpi.rank PROGRAM [ARGS...]`: the per-rank shim of the `mpi` backend.

mpirun starts every rank through this shim. It gives the rank its *own host's* environment
and the torchrun variables, then `exec`s the program (no extra process stays behind):

1. the host's payload, a JSON file named by `LAUNCHER_MPI_ENV` (on the leader it is set in
   mpirun's environment; on a follower our sshd sets it with `SetEnv`, so a remote rank never
   sees the leader's value): SM_CURRENT_HOST, SM_NUM_GPUS and the rest of that host's SM_* set,
   PYTHONPATH, OMP_NUM_THREADS, its inherited variables (toolkit issue #158, defect D2);
2. on top, the variables mpirun forwarded with `-x` (named in `LAUNCHER_MPI_FORWARDED`) keep
   mpirun's value: they are the job's explicit choice (`-x NCCL_DEBUG=INFO`);
3. RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE from `OMPI_COMM_WORLD_*` (or `PMI_*`), and
   GROUP_RANK, GROUP_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RUN_ID from the payload,
   so a DDP script written for torchrun runs unchanged under MPI.

Without a payload (someone runs the shim under their own mpirun) only step 3 applies, and
MASTER_ADDR/MASTER_PORT are kept from the environment. Exit status 2 (message on stderr) when
no MPI rank variables are present or the payload is unreadable; 127 when the program cannot
be executed. Standard library and `launcher.contract` only: this runs once per rank.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Mapping
from typing import Any

from launcher import contract

ENV_FILE_VAR = "LAUNCHER_MPI_ENV"
FORWARDED_VAR = "LAUNCHER_MPI_FORWARDED"
_MPI_PREFIXES = ("OMPI_COMM_WORLD_", "PMI_", "MPI_LOCAL")


class ShimError(Exception):
    """The rank cannot be given a consistent environment; the message says why."""


def rank_environment(environ: Mapping[str, str], payload: Mapping[str, Any]) -> dict[str, str]:
    """The environment the rank runs with (pure; see the module docstring for the layers).

    Raises `ShimError` when no MPI rank variables are present or they are malformed.
    """
    mpi_vars = {k: v for k, v in environ.items() if k.startswith(_MPI_PREFIXES)}
    try:
        found = contract.read_rank_env(mpi_vars)
    except contract.ContractError as e:
        raise ShimError(str(e)) from None
    if found is None:
        raise ShimError("no OMPI_COMM_WORLD_RANK/SIZE (or PMI_RANK/SIZE): not started by mpirun")
    env = dict(environ)
    kept = {n for n in environ.get(FORWARDED_VAR, "").split(",") if n}
    host_env = payload.get("env", {})
    if not isinstance(host_env, dict):
        raise ShimError("the payload's env is not an object")
    env.update({str(k): str(v) for k, v in host_env.items() if k not in kept})
    try:
        rank = dataclasses.replace(
            found,
            node_rank=int(payload.get("node_rank", found.node_rank)),
            num_nodes=int(payload.get("num_nodes", found.num_nodes)),
            master_addr=str(payload.get("master_addr") or environ.get(contract.MASTER_ADDR, "")),
            master_port=int(payload.get("master_port") or environ.get(contract.MASTER_PORT) or 0),
            run_id=str(payload.get("run_id", "none")),
            host=str(payload.get("host", "")),
            backend="mpi",
        )
    except (TypeError, ValueError) as e:
        raise ShimError(f"malformed payload: {e}") from None
    rank_vars = rank.torch_env()
    if not rank.error_file:
        del rank_vars[contract.ERROR_FILE]
    if not rank.master_addr:
        del rank_vars[contract.MASTER_ADDR]
    if not rank.master_port:
        del rank_vars[contract.MASTER_PORT]
    env.update(rank_vars)
    return env


def load_payload(environ: Mapping[str, str]) -> dict[str, Any]:
    """The host payload named by `LAUNCHER_MPI_ENV`, or {} when unset. Raises `ShimError`."""
    path = environ.get(ENV_FILE_VAR, "")
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:  # noqa: PTH123 - the shim stays minimal
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise ShimError(f"cannot read the host environment {path}: {e}") from None
    if not isinstance(data, dict):
        raise ShimError(f"{path} does not hold a JSON object")
    return data


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python -m launcher.mpi.rank PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    try:
        env = rank_environment(os.environ, load_payload(os.environ))
    except ShimError as e:
        print(f"[launcher mpirank] error: {e}", file=sys.stderr)
        return 2
    try:
        os.execvpe(argv[0], argv, env)  # noqa: S606 - argv from the launcher, never a shell
    except OSError as e:
        print(f"[launcher mpirank] error: cannot run {argv[0]}: {e.strerror}", file=sys.stderr)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
