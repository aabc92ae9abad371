"""The rank environment contract, written once and shared by the launcher and `collectives`.

The launcher *produces* these variables for every rank (`RankEnv.torch_env`,
`HorovodSlot.env`); a training script *consumes* them through `collectives`, which calls
`read_rank_env`. Keeping both sides in one stdlib-only module is what makes the round trip
testable and stops a second copy of the variable names from drifting (submitit's `_env`).

Readers accept, in order of preference: the torchrun contract (what our `torch` backend sets),
the horovodrun gloo contract, Open MPI's `OMPI_COMM_WORLD_*`, and MPICH/Intel MPI's `PMI_*`.
Outside any launcher `read_rank_env` returns `None` and callers use `WORLD_OF_ONE`.

The rank's side of hang detection lives here too, because it must run without torch and
`collectives` may import nothing else of the launcher: the progress file (`PROGRESS_FILE`,
its layout, `progress()`, `progress_section()`) and the stack dump on a signal
(`STACK_FILE`, `install_stack_dump()`). The launcher's side is `launcher.hangs`; the protocol
is in docs/hangs.md.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

# --- torchrun contract (torch.distributed.elastic LocalElasticAgent) ---
RANK = "RANK"
LOCAL_RANK = "LOCAL_RANK"
WORLD_SIZE = "WORLD_SIZE"
LOCAL_WORLD_SIZE = "LOCAL_WORLD_SIZE"
GROUP_RANK = "GROUP_RANK"
GROUP_WORLD_SIZE = "GROUP_WORLD_SIZE"
ROLE_RANK = "ROLE_RANK"
ROLE_WORLD_SIZE = "ROLE_WORLD_SIZE"
ROLE_NAME = "ROLE_NAME"
MASTER_ADDR = "MASTER_ADDR"
MASTER_PORT = "MASTER_PORT"
RUN_ID = "TORCHELASTIC_RUN_ID"
RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"
MAX_RESTARTS = "TORCHELASTIC_MAX_RESTARTS"
ERROR_FILE = "TORCHELASTIC_ERROR_FILE"
NCCL_ASYNC_ERROR_HANDLING = "TORCH_NCCL_ASYNC_ERROR_HANDLING"
OMP_NUM_THREADS = "OMP_NUM_THREADS"

# --- ours: extra facts a rank may want, none of which torch needs ---
HOST = "LAUNCHER_HOST"  # the SageMaker host name this rank runs on (algo-1, ...)
BACKEND = "LAUNCHER_BACKEND"  # torch | horovod | mpi | none
# Whole-job restarts (docs/usage.md "Restarts"): where checkpoints live, as the launcher
# resolved it (SageMaker's checkpointconfig.json LocalPath, else /opt/ml/checkpoints, else
# `--checkpoint-dir`); set for every rank of every attempt.
CHECKPOINT_DIR = "LAUNCHER_CHECKPOINT_DIR"

# --- horovodrun gloo contract (horovod/runner/gloo_run.py) ---
HOROVOD_RANK = "HOROVOD_RANK"
HOROVOD_SIZE = "HOROVOD_SIZE"
HOROVOD_LOCAL_RANK = "HOROVOD_LOCAL_RANK"
HOROVOD_LOCAL_SIZE = "HOROVOD_LOCAL_SIZE"
HOROVOD_CROSS_RANK = "HOROVOD_CROSS_RANK"
HOROVOD_CROSS_SIZE = "HOROVOD_CROSS_SIZE"
HOROVOD_HOSTNAME = "HOROVOD_HOSTNAME"
HOROVOD_GLOO_RENDEZVOUS_ADDR = "HOROVOD_GLOO_RENDEZVOUS_ADDR"
HOROVOD_GLOO_RENDEZVOUS_PORT = "HOROVOD_GLOO_RENDEZVOUS_PORT"
HOROVOD_CONTROLLER = "HOROVOD_CONTROLLER"
HOROVOD_CPU_OPERATIONS = "HOROVOD_CPU_OPERATIONS"
HOROVOD_GLOO_IFACE = "HOROVOD_GLOO_IFACE"

# --- Open MPI (set by mpirun / orted) ---
OMPI_RANK = "OMPI_COMM_WORLD_RANK"
OMPI_SIZE = "OMPI_COMM_WORLD_SIZE"
OMPI_LOCAL_RANK = "OMPI_COMM_WORLD_LOCAL_RANK"
OMPI_LOCAL_SIZE = "OMPI_COMM_WORLD_LOCAL_SIZE"
# --- MPICH / Intel MPI ---
PMI_RANK = "PMI_RANK"
PMI_SIZE = "PMI_SIZE"
MPI_LOCALRANKID = "MPI_LOCALRANKID"
MPI_LOCALNRANKS = "MPI_LOCALNRANKS"


class ContractError(ValueError):
    """A rank variable is present but malformed; the message names the variable."""


@dataclass(frozen=True, slots=True)
class RankEnv:
    """Where one rank sits in the job. Produced by the launcher, read back by `collectives`."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int
    node_rank: int
    num_nodes: int
    master_addr: str
    master_port: int
    run_id: str = "none"
    error_file: str = ""
    host: str = ""
    backend: str = "torch"
    restart_count: int = 0
    max_restarts: int = 0
    role_name: str = "default"

    def torch_env(self) -> dict[str, str]:
        """The torchrun contract for this rank (role = the whole world, as torchrun's default)."""
        return {
            RANK: str(self.rank),
            LOCAL_RANK: str(self.local_rank),
            WORLD_SIZE: str(self.world_size),
            LOCAL_WORLD_SIZE: str(self.local_world_size),
            GROUP_RANK: str(self.node_rank),
            GROUP_WORLD_SIZE: str(self.num_nodes),
            ROLE_RANK: str(self.rank),
            ROLE_WORLD_SIZE: str(self.world_size),
            ROLE_NAME: self.role_name,
            MASTER_ADDR: self.master_addr,
            MASTER_PORT: str(self.master_port),
            RUN_ID: self.run_id,
            RESTART_COUNT: str(self.restart_count),
            MAX_RESTARTS: str(self.max_restarts),
            ERROR_FILE: self.error_file,
            HOST: self.host,
            BACKEND: self.backend,
        }


WORLD_OF_ONE = RankEnv(
    rank=0,
    local_rank=0,
    world_size=1,
    local_world_size=1,
    node_rank=0,
    num_nodes=1,
    master_addr="127.0.0.1",
    master_port=0,
    backend="none",
)


@dataclass(frozen=True, slots=True)
class HorovodSlot:
    """One slot of Horovod's host assignment (`horovod.runner.common.util.hosts.SlotInfo`)."""

    hostname: str
    rank: int
    local_rank: int
    cross_rank: int
    size: int
    local_size: int
    cross_size: int

    def env(self, rendezvous_addr: str, rendezvous_port: int, iface: str | None) -> dict[str, str]:
        """The horovodrun gloo variables for this slot."""
        env = {
            HOROVOD_HOSTNAME: self.hostname,
            HOROVOD_RANK: str(self.rank),
            HOROVOD_SIZE: str(self.size),
            HOROVOD_LOCAL_RANK: str(self.local_rank),
            HOROVOD_LOCAL_SIZE: str(self.local_size),
            HOROVOD_CROSS_RANK: str(self.cross_rank),
            HOROVOD_CROSS_SIZE: str(self.cross_size),
            HOROVOD_GLOO_RENDEZVOUS_ADDR: rendezvous_addr,
            HOROVOD_GLOO_RENDEZVOUS_PORT: str(rendezvous_port),
            HOROVOD_CONTROLLER: "gloo",
            HOROVOD_CPU_OPERATIONS: "gloo",
        }
        if iface:
            env[HOROVOD_GLOO_IFACE] = iface
        return env


def horovod_slots(hosts: list[tuple[str, int]]) -> list[HorovodSlot]:
    """Horovod's slot plan for `(hostname, slots)` pairs, in host order.

    Ranks go host by host; `cross_size` of a slot is the number of hosts that have a slot with
    the same local rank, and `cross_rank` is this host's index among them. With uneven slots the
    cross values differ between ranks of one host, exactly as `get_host_assignments` does.
    """
    size = sum(n for _, n in hosts)
    max_local = max((n for _, n in hosts), default=0)
    hosts_with_local = [[h for h, n in hosts if n > lr] for lr in range(max_local)]
    slots: list[HorovodSlot] = []
    rank = 0
    for hostname, n in hosts:
        for local_rank in range(n):
            peers = hosts_with_local[local_rank]
            slots.append(
                HorovodSlot(
                    hostname=hostname,
                    rank=rank,
                    local_rank=local_rank,
                    cross_rank=peers.index(hostname),
                    size=size,
                    local_size=n,
                    cross_size=len(peers),
                )
            )
            rank += 1
    return slots


def _int(environ: Mapping[str, str], name: str) -> int:
    raw = environ[name]
    try:
        value = int(raw)
    except ValueError:
        raise ContractError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ContractError(f"{name}={raw!r} is negative")
    return value


def _get_int(environ: Mapping[str, str], name: str, default: int) -> int:
    return _int(environ, name) if environ.get(name, "") != "" else default


def read_rank_env(environ: Mapping[str, str]) -> RankEnv | None:
    """Read this process's place in the job, or `None` when no launcher started it.

    Raises `ContractError` when a variable is present but not a non-negative integer, or when
    rank and size disagree (rank >= size), so a broken launch fails loudly instead of training
    a silently wrong world.
    """
    env = _read(environ)
    if env is None:
        return None
    if env.rank >= env.world_size or env.local_rank >= env.local_world_size:
        raise ContractError(
            f"rank {env.rank}/{env.world_size} (local {env.local_rank}/{env.local_world_size})"
            " is outside its world"
        )
    return env


def _read(environ: Mapping[str, str]) -> RankEnv | None:
    master_addr = environ.get(MASTER_ADDR, "127.0.0.1")
    master_port = _get_int(environ, MASTER_PORT, 0)
    host = environ.get(HOST, "")
    error_file = environ.get(ERROR_FILE, "")
    if environ.get(RANK, "") != "" and environ.get(WORLD_SIZE, "") != "":
        world = _int(environ, WORLD_SIZE)
        return RankEnv(
            rank=_int(environ, RANK),
            local_rank=_get_int(environ, LOCAL_RANK, 0),
            world_size=world,
            local_world_size=_get_int(environ, LOCAL_WORLD_SIZE, world),
            node_rank=_get_int(environ, GROUP_RANK, 0),
            num_nodes=_get_int(environ, GROUP_WORLD_SIZE, 1),
            master_addr=master_addr,
            master_port=master_port,
            run_id=environ.get(RUN_ID, "none"),
            error_file=error_file,
            host=host,
            backend=environ.get(BACKEND, "torch"),
            restart_count=_get_int(environ, RESTART_COUNT, 0),
            max_restarts=_get_int(environ, MAX_RESTARTS, 0),
            role_name=environ.get(ROLE_NAME, "default"),
        )
    for rank_var, size_var, lrank_var, lsize_var, node_var, nodes_var, backend in (
        (
            HOROVOD_RANK,
            HOROVOD_SIZE,
            HOROVOD_LOCAL_RANK,
            HOROVOD_LOCAL_SIZE,
            HOROVOD_CROSS_RANK,
            HOROVOD_CROSS_SIZE,
            "horovod",
        ),
        (OMPI_RANK, OMPI_SIZE, OMPI_LOCAL_RANK, OMPI_LOCAL_SIZE, "", "", "mpi"),
        (PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS, "", "", "mpi"),
    ):
        if environ.get(rank_var, "") == "" or environ.get(size_var, "") == "":
            continue
        world = _int(environ, size_var)
        local_size = _get_int(environ, lsize_var, world)
        rank = _int(environ, rank_var)
        # MPI does not name a node rank; with contiguous slots it is rank // local size.
        node_rank = (
            _get_int(environ, node_var, rank // max(local_size, 1))
            if node_var
            else (rank // max(local_size, 1))
        )
        num_nodes = (
            _get_int(environ, nodes_var, 1) if nodes_var else -(-world // max(local_size, 1))
        )
        return RankEnv(
            rank=rank,
            local_rank=_get_int(environ, lrank_var, 0),
            world_size=world,
            local_world_size=local_size,
            node_rank=node_rank,
            num_nodes=num_nodes,
            master_addr=master_addr,
            master_port=master_port,
            error_file=error_file,
            host=host,
            backend=environ.get(BACKEND, backend),
        )
    return None


# --- progress and stack dumps: how a rank shows it is alive (docs/hangs.md) -------------------
#
# The launcher names one progress file per rank in PROGRESS_FILE (and creates it). The rank
# maps it (mmap, MAP_SHARED) and bumps a counter with plain memory stores: no system call per
# call, so a training loop can count every collective. The launcher reads the same file
# (`pread`) twice a second; nothing travels over a pipe or a socket.
#
# Layout, PROGRESS_SIZE (128) bytes: bytes 0-7 are PROGRESS_MAGIC; then unsigned 64-bit
# words in the host's byte order (writer and reader always share a host), indexed as below;
# bytes 72-103 hold the open section's name (UTF-8, NUL-padded); word 13 (bytes 104-111) is
# P_EXITING_NS; the rest is reserved (zero).
# Times are CLOCK_MONOTONIC in nanoseconds (Python's `time.monotonic_ns()`), which every
# process of a host shares. Each word is written with one aligned 8-byte store, so a reader
# never sees half of a word; it may see a new count with the previous time, which is harmless.

PROGRESS_FILE = "LAUNCHER_PROGRESS_FILE"  # the rank's progress file (the launcher creates it)
STACK_FILE = "LAUNCHER_STACK_FILE"  # where the rank appends its stacks on the stack signal

PROGRESS_MAGIC = b"mlprog01"
PROGRESS_SIZE = 128
P_COUNT = 1  # progress events so far: collectives, progress() calls, sections left
P_LAST_NS = 2  # when the last one happened
P_SECTION_DEPTH = 3  # > 0 while inside progress_section(): hang timing is paused
P_SECTION_SINCE_NS = 4  # when the outermost open section began
P_PID = 5  # the process that attached (the one to ask for stacks); 0: nobody yet
P_STACK_SIGNAL = 6  # the signal that makes that process dump its stacks; 0: none, send none
P_ATTACHED_NS = 7  # when that process attached
P_TRACER_PID = 8  # the launcher, written at creation: may ptrace the rank (see allow_tracer)
P_EXITING_NS = 13  # when the process began to shut down (its work is done); 0: not yet
SECTION_NAME_OFFSET = 72
SECTION_NAME_SIZE = 32
PR_SET_PTRACER = 0x59616D61  # prctl option (Yama): name the process that may ptrace us
YAMA_PTRACE_SCOPE = "/proc/sys/kernel/yama/ptrace_scope"

# The stack signal is SIGRTMIN + 4 (38 with glibc). A real-time signal because the usual ones
# are taken: SIGUSR1 already dumps stacks to stderr (collectives.record) and is what Slurm and
# Lightning send before a preemption; submitit and Slurm's --signal users take SIGUSR2. No
# tool in this field sends real-time signals, and the kernel queues them instead of merging.
# The number a rank actually registered is written into its progress file, and the launcher
# sends only that: a process that registered nothing is never sent a signal whose default
# action would kill it.
STACK_SIGNAL_OFFSET = 4


class ProgressFile:
    """The rank's side of one progress file: a shared mapping written with plain stores.

    Opening creates the file when it is missing or empty and refuses anything else that is
    not a progress file (wrong size or magic), so a mistyped variable cannot make a rank
    scribble over an unrelated file. Raises `OSError` when the file cannot be opened or
    mapped, `ValueError` when it is not a progress file. The counter is never reset: a
    second attach (another `ProgressFile` on the same path) continues it.
    """

    __slots__ = ("_map", "path", "words")

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import mmap  # noqa: PLC0415 - only a rank that reports progress needs it

        self.path = os.fspath(path)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                os.ftruncate(fd, PROGRESS_SIZE)
            elif size != PROGRESS_SIZE:
                raise ValueError(f"{self.path} is not a progress file ({size} bytes)")
            self._map = mmap.mmap(fd, PROGRESS_SIZE)  # MAP_SHARED, read and write
        finally:
            os.close(fd)  # the mapping keeps the file
        magic = bytes(self._map[:8])
        if magic == bytes(8):
            self._map[:8] = PROGRESS_MAGIC
        elif magic != PROGRESS_MAGIC:
            self._map.close()
            raise ValueError(f"{self.path} is not a progress file (magic {magic!r})")
        self.words = memoryview(self._map).cast("Q")
        self.words[P_PID] = os.getpid()
        self.words[P_ATTACHED_NS] = time.monotonic_ns()

    def tick(self) -> None:
        """Count one unit of progress, now."""
        words = self.words
        words[P_COUNT] += 1
        words[P_LAST_NS] = time.monotonic_ns()

    def exiting(self) -> None:
        """Say that this process has begun to shut down (once: the first time counts). Its
        teardown (a process group destroyed, CUDA freed, interpreter finalised) is not timed
        as a stall; the launcher bounds it by the section limit while the process lives."""
        words = self.words
        if words[P_EXITING_NS] == 0:
            words[P_EXITING_NS] = time.monotonic_ns()

    def enter_section(self, name: str) -> None:
        """Open a section (nested ones count; the outermost names it): hang timing pauses."""
        words = self.words
        if words[P_SECTION_DEPTH] == 0:
            raw = name.encode("utf-8", "replace")[:SECTION_NAME_SIZE]
            end = SECTION_NAME_OFFSET + SECTION_NAME_SIZE
            self._map[SECTION_NAME_OFFSET:end] = raw.ljust(SECTION_NAME_SIZE, b"\0")
            words[P_SECTION_SINCE_NS] = time.monotonic_ns()
        words[P_SECTION_DEPTH] += 1

    def leave_section(self) -> None:
        """Close the innermost section; leaving one counts as progress (timing restarts)."""
        words = self.words
        if words[P_SECTION_DEPTH] > 0:
            words[P_SECTION_DEPTH] -= 1
        self.tick()

    def announce_stack_signal(self, signum: int) -> None:
        """Tell the launcher that `signum` makes this process dump its stacks (0: none)."""
        self.words[P_STACK_SIGNAL] = signum


_progress: ProgressFile | None = None
_progress_words: memoryview | None = None  # _progress.words: one global read on the hot path
_progress_tried = False
_monotonic_ns = time.monotonic_ns


def attach_progress(environ: Mapping[str, str] | None = None) -> ProgressFile | None:
    """This process's progress file, attached on first call (idempotent), or `None`.

    `None` when `PROGRESS_FILE` is unset or empty (not launched by us: progress is then a
    no-op), and when the file cannot be used: that is said once on stderr, and the rank runs
    on without reporting progress (the launcher then sees a rank that never attached).
    """
    global _progress, _progress_words, _progress_tried  # noqa: PLW0603 - one per process
    if _progress is not None or _progress_tried:
        return _progress
    _progress_tried = True
    path = (os.environ if environ is None else environ).get(PROGRESS_FILE, "")
    if not path:
        return None
    try:
        _progress = ProgressFile(path)
    except (OSError, ValueError) as exc:
        print(f"progress is not reported: {PROGRESS_FILE}={path}: {exc}", file=sys.stderr)
        return None
    _progress_words = _progress.words
    allow_tracer(_progress.words[P_TRACER_PID])
    _at_shutdown(_progress.exiting)
    return _progress


def _at_shutdown(mark: Callable[[], None]) -> None:
    """Call `mark` as early as the interpreter's shutdown allows: with threading's own exit
    hooks, which run before non-daemon threads are joined and before every `atexit` handler
    (the `collectives` group teardown among them, which can take seconds); else as an atexit
    handler. A process killed by a signal never calls it, and needs not: it is gone."""
    import threading  # noqa: PLC0415 - only ranks that report progress

    register = getattr(threading, "_register_atexit", None)  # CPython 3.9+, private
    try:
        if register is None:
            raise RuntimeError("no threading exit hooks")
        register(mark)
    except RuntimeError:  # already shutting down, or another Python
        import atexit  # noqa: PLC0415

        atexit.register(mark)


def allow_tracer(pid: int, scope_file: str = YAMA_PTRACE_SCOPE) -> bool | None:
    """Let process `pid` and its descendants ptrace this one, where Yama's `ptrace_scope` is 1
    (only ancestors may, otherwise): the launcher runs py-spy as its child, which is not an
    ancestor of its ranks. Returns None when nothing was needed (no Yama, another scope, no
    pid), else whether the kernel agreed; never raises (the stack signal is the fallback).
    """
    try:
        with open(scope_file, "rb") as f:  # noqa: PTH123 - pathlib would be an import more
            if f.read().strip() != b"1" or pid <= 0:
                return None
        import ctypes  # noqa: PLC0415 - only where Yama restricts ptrace

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(PR_SET_PTRACER, ctypes.c_ulong(pid), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return None


def progress() -> None:
    """Count one unit of progress for hang detection (a step, a batch, a heartbeat).

    About 0.2 µs: two stores into the mapped file, no system call. The first call attaches
    the file named by `PROGRESS_FILE`; without one this is a no-op. Never raises. Safe from
    any thread; a process forked after attaching shares the counter.
    """
    words = _progress_words
    if words is None:
        if _progress_tried or attach_progress() is None:
            return
        words = _progress_words
        assert words is not None
    words[P_COUNT] += 1
    words[P_LAST_NS] = _monotonic_ns()


@contextmanager
def progress_section(name: str = "section") -> Iterator[None]:
    """Pause hang timing while the body runs (a checkpoint write, an evaluation without
    collectives); leaving counts as progress. Nests. Without a progress file: no-op.

    The launcher still bounds a section (docs/hangs.md): a rank that never leaves one is hung.
    """
    file = attach_progress()
    if file is None:
        yield
        return
    file.enter_section(name)
    try:
        yield
    finally:
        file.leave_section()


_stack_stream: IO[bytes] | None = None


def stack_signal() -> int:
    """The stack signal's number on this platform (0 where it has no real-time signals)."""
    import signal  # noqa: PLC0415

    low = getattr(signal, "SIGRTMIN", 0)
    return int(low) + STACK_SIGNAL_OFFSET if low else 0


def install_stack_dump(environ: Mapping[str, str] | None = None) -> int:
    """Make the stack signal append every thread's Python stack to `STACK_FILE`; return the
    signal's number, or 0 when nothing was installed. Idempotent.

    The dump is `faulthandler`'s: written from the C signal handler, so it works while the
    main thread is blocked in C (a collective, a sleep) or spins holding the GIL, with no
    ptrace. A handler installed earlier for the same signal is chained (called after the dump);
    a default action is not (it would end the process). The number is announced in the
    progress file (attaching it), which is how the launcher knows it may send the signal.
    Nothing is installed when `STACK_FILE` is unset or cannot be opened (said once on stderr).
    """
    global _stack_stream  # noqa: PLW0603 - the stream must stay open as long as the handler
    import faulthandler  # noqa: PLC0415
    import signal  # noqa: PLC0415

    signum = stack_signal()
    if _stack_stream is not None:
        return signum
    path = (os.environ if environ is None else environ).get(STACK_FILE, "")
    if not path or not signum:
        return 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        stream = os.fdopen(fd, "ab")  # held open for as long as the handler may write
    except OSError as exc:
        print(f"stacks are not dumped on a signal: {STACK_FILE}={path}: {exc}", file=sys.stderr)
        return 0
    previous = signal.getsignal(signum)
    faulthandler.register(signum, file=stream, all_threads=True, chain=previous != signal.SIG_DFL)
    _stack_stream = stream
    file = attach_progress(environ)
    if file is not None:
        file.announce_stack_signal(signum)
    return signum


# --- checkpoints: the names both sides read (collectives writes, the launcher reads) ---------
#
# A checkpoint of step N is the file `step-<N, 12 digits>.ckpt` in the checkpoint folder,
# written whole under a hidden temporary name and renamed into place (collectives.checkpoint),
# so a file with this name is always complete. The latest is the highest step. The launcher
# reads only the names, to tell whether an attempt advanced the checkpoint.

CHECKPOINT_PREFIX = "step-"
CHECKPOINT_SUFFIX = ".ckpt"
CHECKPOINT_DIGITS = 12


def checkpoint_name(step: int) -> str:
    """The file name of step `step`'s checkpoint. Raises ValueError for a negative step or
    one beyond `CHECKPOINT_DIGITS` digits (names must sort as numbers)."""
    if not 0 <= step < 10**CHECKPOINT_DIGITS:
        raise ValueError(f"a checkpoint step must be from 0 to {10**CHECKPOINT_DIGITS - 1}")
    return f"{CHECKPOINT_PREFIX}{step:0{CHECKPOINT_DIGITS}d}{CHECKPOINT_SUFFIX}"


def checkpoint_step(name: str) -> int | None:
    """The step a checkpoint file name belongs to; None for any other name."""
    digits = name.removeprefix(CHECKPOINT_PREFIX).removesuffix(CHECKPOINT_SUFFIX)
    if (
        not name.startswith(CHECKPOINT_PREFIX)
        or not name.endswith(CHECKPOINT_SUFFIX)
        or len(digits) != CHECKPOINT_DIGITS
        or not digits.isdigit()
        or not digits.isascii()
    ):
        return None
    return int(digits)


def latest_checkpoint_step(folder: str | os.PathLike[str]) -> int | None:
    """The highest step with a checkpoint in `folder`; None when there is none, or the
    folder cannot be read (missing: no checkpoint yet)."""
    try:
        with os.scandir(folder) as entries:
            names = [entry.name for entry in entries]
    except OSError:
        return None
    steps = [s for s in map(checkpoint_step, names) if s is not None]
    return max(steps) if steps else None
