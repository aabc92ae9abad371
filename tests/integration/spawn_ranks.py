"""Start N local ranks with the torchrun env contract, for the collectives tests.

TODO(launcher): replace `run_ranks` with the real launcher once `python -m launcher run
--nproc-per-host N -- script.py args...` exists; the tests only need each rank's exit code,
stdout and stderr, and the error-file path. This stand-in builds every rank's variables with
`launcher.contract.RankEnv.torch_env`, the same code the launcher uses, so the contract is the
real one; what it does not test is the launcher's own supervision.

Ranks start in their own session with stdin closed and output to files (no pipe can fill up).
If the job outlives its deadline, or a rank fails and the rest outlive `fail_grace_s`, every
rank's process group is killed. `RankRun.check_no_survivors` asserts that nothing started here
is still alive.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher.contract import RankEnv

_POLL_S = 0.02


def free_port() -> int:
    """A TCP port that was free a moment ago (bind to port 0, read it back)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class RankResult:
    """One finished rank."""

    rank: int
    pid: int
    returncode: int
    stdout: str
    stderr: str
    error_file: Path


@dataclass(frozen=True, slots=True)
class RankRun:
    """A finished job: its ranks in rank order, and whether it had to be killed."""

    ranks: tuple[RankResult, ...]
    killed: bool

    def check_no_survivors(self) -> None:
        """Assert that no process of any rank's session is still alive."""
        for r in self.ranks:
            try:
                os.killpg(r.pid, 0)
            except ProcessLookupError:
                continue
            raise AssertionError(f"rank {r.rank} (pid {r.pid}) left processes behind")

    def describe(self) -> str:
        """Every rank's exit code and output, for assertion messages."""
        return "\n".join(
            f"--- rank {r.rank} rc={r.returncode}\n{r.stdout}\n{r.stderr}" for r in self.ranks
        )


def _kill_all(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
    for p in procs:
        p.wait()


def run_ranks(
    argv: Sequence[str],
    nprocs: int,
    workdir: Path,
    *,
    nnodes: int = 1,
    timeout_s: float = 60.0,
    fail_grace_s: float = 10.0,
    env: Mapping[str, str] | None = None,
    rank_env: Callable[[int], Mapping[str, str]] | None = None,
) -> RankRun:
    """Run `argv` as `nprocs` ranks (split evenly over `nnodes` pretend hosts); wait for all.

    Each rank gets `os.environ`, then `env`, then the torchrun contract for its place, then
    `rank_env(rank)`. Rank r's error file is `workdir/error_<r>.json`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    per_node = nprocs // nnodes
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    for rank in range(nprocs):
        place = RankEnv(
            rank=rank,
            local_rank=rank % per_node,
            world_size=nprocs,
            local_world_size=per_node,
            node_rank=rank // per_node,
            num_nodes=nnodes,
            master_addr="127.0.0.1",
            master_port=port,
            error_file=str(workdir / f"error_{rank}.json"),
            host=f"algo-{rank // per_node + 1}",
        )
        full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {}), **place.torch_env()}
        full.update(rank_env(rank) if rank_env else {})
        out = (workdir / f"stdout_{rank}").open("wb")
        err = (workdir / f"stderr_{rank}").open("wb")
        files += [out, err]
        procs.append(
            subprocess.Popen(
                list(argv),
                env=full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
                cwd=workdir,
            )
        )
    killed = False
    deadline = time.monotonic() + timeout_s
    first_failure: float | None = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if first_failure is None and any(p.returncode not in (None, 0) for p in procs):
                first_failure = now
            if now > deadline or (first_failure and now - first_failure > fail_grace_s):
                killed = True
                break
            time.sleep(_POLL_S)
    finally:
        _kill_all(procs)
        for f in files:
            f.close()
    results = tuple(
        RankResult(
            rank=rank,
            pid=p.pid,
            returncode=p.returncode,
            stdout=(workdir / f"stdout_{rank}").read_text(errors="replace"),
            stderr=(workdir / f"stderr_{rank}").read_text(errors="replace"),
            error_file=workdir / f"error_{rank}.json",
        )
        for rank, p in enumerate(procs)
    )
    return RankRun(results, killed)
