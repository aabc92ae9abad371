"""Start N ranks for the collectives tests: through the real launcher, or a stand-in.

With `real_launcher=True`, `run_ranks` runs `python -m launcher run --nproc-per-host N
--log-dir DIR` and reads each rank's stdout, stderr and error file from its per-rank log
folder; the launcher reports the job, not each rank, so every rank gets its exit code.
The stand-in is for what the real launcher must not or cannot do here: the failure scenarios
need the other ranks to live on after one fails (the launcher stops them at once, which is
its job), and pretending to be several hosts (`nnodes > 1`) needs SageMaker trees (multi-host
jobs through the real launcher are tested in test_local_cluster.py and tests/multihost/). It
builds every rank's variables with `launcher.contract.RankEnv.torch_env`, the same code the
launcher uses.

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
import sys
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
    launcher_code: int | None = None  # the launcher's exit code, when the real one ran

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
    real_launcher: bool = False,
) -> RankRun:
    """Run `argv` as `nprocs` ranks (split evenly over `nnodes` pretend hosts); wait for all.

    Each rank gets `os.environ`, then `env`, then the torchrun contract for its place, then
    `rank_env(rank)`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    if real_launcher:
        assert nnodes == 1 and rank_env is None, "the real launcher runs one host, same env"
        return _run_launcher(
            argv, nprocs, workdir, timeout_s=timeout_s, fail_grace_s=fail_grace_s, env=env
        )
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


def _run_launcher(
    argv: Sequence[str],
    nprocs: int,
    workdir: Path,
    *,
    timeout_s: float,
    fail_grace_s: float,
    env: Mapping[str, str] | None,
) -> RankRun:
    """The real launcher, one host. Its own fail-fast replaces the stand-in's polling."""
    logs = workdir / "logs"
    launcher = [
        sys.executable,
        "-m",
        "launcher",
        "run",
        "--nproc-per-host",
        str(nprocs),
        "--log-dir",
        str(logs),
        "--grace-period",
        str(fail_grace_s),
        "--no-python",
        *argv,
    ]
    full = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(
        launcher, env=full, stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True
    )
    killed = False
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        killed = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher's watchdog then stops the ranks
        proc.wait()

    def read(rank: int, name: str) -> str:
        path = logs / f"rank-{rank}" / name
        return path.read_text(errors="replace") if path.exists() else ""

    results = tuple(
        RankResult(
            rank=rank,
            pid=proc.pid,
            returncode=proc.returncode,
            stdout=read(rank, "stdout.log"),
            stderr=read(rank, "stderr.log"),
            error_file=logs / f"rank-{rank}" / "error.json",
        )
        for rank in range(nprocs)
    )
    return RankRun(results, killed, launcher_code=proc.returncode)
