"""Every rank's Python stack, taken without stopping the job, and what it says.

Two ways, tried in the order given (by default py-spy first):

* **py-spy** (`py-spy dump --pid P`): reads the rank's memory through ptrace, so it needs no
  cooperation from the rank, but it needs ptrace: root or CAP_SYS_PTRACE in a container, and
  with Yama's `ptrace_scope` 1 only an ancestor (the launcher is its ranks' ancestor;
  `launcher stacks`, run from a shell, is not). It pauses the rank for the few milliseconds
  the read takes.
* **the stack signal**: a rank that called `collectives.init` (or the stdlib
  `launcher.contract.install_stack_dump`) has `faulthandler` registered on a real-time signal
  and announced the signal's number in its progress file. Sending it makes the rank's signal
  handler append every thread's stack to the rank's stack file; no ptrace is involved. Only
  a rank that announced a signal is ever sent one (the default action would end it).

Both dumps are parsed into frames, innermost first; the main thread is the one that matters
(py-spy names it; in faulthandler's dump it is the thread that did not start in
`threading.py`). A stack is *in a collective* when a frame is in torch.distributed, Horovod,
mpi4py, the `collectives` wrappers, or a CUDA synchronisation: a rank there waits for others.

`collect` runs in the launcher and starts py-spy through `launcher.procs.capture` (the module
that starts every child process), unless a runner is passed in.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PY_SPY = "py-spy"
SIGNAL = "signal"
METHODS = (PY_SPY, SIGNAL)
DEFAULT_TIMEOUT_S = 10.0
_SETTLE_S = 0.05  # a signal dump is whole once its file stops growing for this long
_POLL_S = 0.01

# A frame in one of these files (path fragments, with "/" separators) waits for other ranks.
COLLECTIVE_PATHS = (
    "torch/distributed/",
    "horovod/",
    "mpi4py/",
    "collectives/ops.py",
    "collectives/engines.py",
    "collectives/group.py",
)
# Frames whose function names the collective a rank waits in (the innermost public one).
_OP_PATHS = (
    "torch/distributed/distributed_c10d.py",
    "collectives/ops.py",
    "collectives/group.py",
    "horovod/torch/mpi_ops.py",
    "horovod/common/",
)
_CUDA_WAITS = ("synchronize", "wait", "wait_stream", "wait_event")


@dataclass(frozen=True, slots=True)
class Frame:
    """One Python frame: where and in which function."""

    function: str
    file: str
    line: int

    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Thread:
    """One thread of a dump: its name (py-spy) or id (faulthandler), frames innermost first."""

    name: str
    frames: tuple[Frame, ...]


def is_collective_frame(frame: Frame) -> bool:
    """Whether `frame` is inside a collective or a wait for other ranks or the GPU."""
    path = frame.file.replace("\\", "/")
    if any(part in path for part in COLLECTIVE_PATHS):
        return True
    return "torch/cuda/" in path and frame.function in _CUDA_WAITS


@dataclass(frozen=True, slots=True)
class RankStack:
    """One rank's stack as taken, or why none could be taken."""

    rank: int
    pid: int
    method: str  # "py-spy", "signal", or "" when neither worked
    text: str  # the dump as the tool wrote it ("" when none)
    frames: tuple[Frame, ...] = ()  # the main thread's, innermost first
    error: str = ""  # why no stack (each method tried, with its reason)

    @property
    def ok(self) -> bool:
        return bool(self.frames)

    @property
    def innermost(self) -> Frame | None:
        return self.frames[0] if self.frames else None

    @property
    def in_collective(self) -> bool:
        return any(is_collective_frame(f) for f in self.frames)

    @property
    def op(self) -> str | None:
        """The collective it waits in ("all_reduce", "barrier", "init_process_group"...)."""
        for frame in self.frames:
            path = frame.file.replace("\\", "/")
            name = frame.function
            public = not name.startswith(("_", "<")) and name not in ("wrapper", "inner")
            if public and any(p in path for p in _OP_PATHS):
                return name
        for frame in self.frames:
            if is_collective_frame(frame):
                return frame.function
        return None

    @property
    def caller(self) -> Frame | None:
        """The innermost frame outside any collective: the code that called it (or that runs)."""
        return next((f for f in self.frames if not is_collective_frame(f)), self.innermost)


# --- parsing ------------------------------------------------------------------------------

_PYSPY_THREAD = re.compile(r'^Thread (?P<id>\S+) \((?P<state>[^)]*)\)(?:: "(?P<name>.*)")?\s*$')
_PYSPY_FRAME = re.compile(r"^\s+(?P<func>.+?) \((?P<file>.*):(?P<line>\d+)\)\s*$")
_FH_THREAD = re.compile(r"^(?:Current thread|Thread) (?P<id>0x[0-9a-fA-F]+|\d+) \(most recent")
_FH_STACK = re.compile(r"^Stack \(most recent call first\):")
_FH_FRAME = re.compile(r'^\s+File "(?P<file>.*)", line (?P<line>\d+) in (?P<func>.+?)\s*$')


def parse_pyspy(text: str) -> tuple[Thread, ...]:
    """The threads of `py-spy dump` output (frames innermost first; native frames without a
    line number and the `Locals:` of `--locals` are skipped)."""
    threads: list[Thread] = []
    name: str | None = None
    frames: list[Frame] = []
    for line in text.splitlines():
        head = _PYSPY_THREAD.match(line)
        if head:
            if name is not None:
                threads.append(Thread(name, tuple(frames)))
            name, frames = head["name"] or head["id"], []
            continue
        frame = _PYSPY_FRAME.match(line)
        if frame and name is not None:
            frames.append(Frame(frame["func"], frame["file"], int(frame["line"])))
    if name is not None:
        threads.append(Thread(name, tuple(frames)))
    return tuple(threads)


def parse_faulthandler(text: str) -> tuple[Thread, ...]:
    """The threads of a `faulthandler` dump (`all_threads=True`, or the single-thread form)."""
    threads: list[Thread] = []
    name: str | None = None
    frames: list[Frame] = []
    for line in text.splitlines():
        head = _FH_THREAD.match(line)
        if head or _FH_STACK.match(line):
            if name is not None:
                threads.append(Thread(name, tuple(frames)))
            name, frames = (head["id"] if head else "stack"), []
            continue
        frame = _FH_FRAME.match(line)
        if frame and name is not None:
            frames.append(Frame(frame["func"], frame["file"], int(frame["line"])))
    if name is not None:
        threads.append(Thread(name, tuple(frames)))
    return tuple(threads)


def main_thread(threads: Sequence[Thread]) -> Thread | None:
    """The main thread: py-spy's "MainThread"; else the thread whose outermost frame is not
    in `threading.py` (threads started by `threading` begin in its `_bootstrap`), preferring
    one that began at a module's top level; else the first thread with frames."""
    for thread in threads:
        if thread.name == "MainThread":
            return thread
    with_frames = [t for t in threads if t.frames]
    not_started = [t for t in with_frames if not t.frames[-1].file.endswith("threading.py")]
    for thread in not_started:
        if thread.frames[-1].function == "<module>":
            return thread
    if not_started:
        return not_started[0]
    return with_frames[0] if with_frames else None


def _stack(rank: int, pid: int, method: str, text: str, threads: Sequence[Thread]) -> RankStack:
    main = main_thread(threads)
    if main is None or not main.frames:
        return RankStack(rank, pid, "", text, error=f"{method}: no Python frame in the dump")
    return RankStack(rank, pid, method, text, main.frames)


# --- taking stacks -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """A rank to take the stack of: the process (the pid in its progress file when it attached,
    else the one the launcher started), its stack file and announced signal (0: none)."""

    rank: int
    pid: int
    stack_file: Path | None = None
    stack_signal: int = 0


# (argv, timeout_s) -> (returncode or None when killed at the timeout, stdout, stderr)
Runner = Callable[[list[str], float], tuple[int | None, str, str]]


def find_py_spy(environ: Mapping[str, str] | None = None) -> str | None:
    """py-spy beside this Python (a virtual environment's bin/, where pip puts it), else on
    PATH, else None."""
    beside = Path(sys.executable).parent / PY_SPY
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    path = (os.environ if environ is None else environ).get("PATH")
    import shutil  # noqa: PLC0415 - only when stacks are taken: every launch skips it

    return shutil.which(PY_SPY, path=path)


def _capture(argv: list[str], timeout_s: float) -> tuple[int | None, str, str]:
    from launcher import procs  # noqa: PLC0415 - the one module that starts processes

    done = procs.capture(argv, timeout_s=timeout_s)
    return done.returncode, done.stdout, done.stderr


def by_py_spy(target: Target, py_spy: str, timeout_s: float, run: Runner) -> RankStack:
    """`py-spy dump --pid`, parsed. On failure the `RankStack` has no frames and says why
    (py-spy's own last line: "Permission denied", "No such process", ...)."""
    try:
        code, out, err = run([py_spy, "dump", "--pid", str(target.pid)], timeout_s)
    except Exception as exc:  # a runner that cannot start py-spy: one reason among others
        return RankStack(target.rank, target.pid, "", "", error=f"{PY_SPY}: {exc}")
    if code is None:
        return RankStack(target.rank, target.pid, "", out, error=f"{PY_SPY}: timed out")
    if code != 0:
        last = (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]
        return RankStack(target.rank, target.pid, "", out, error=f"{PY_SPY}: {last}")
    return _stack(target.rank, target.pid, PY_SPY, out, parse_pyspy(out))


def by_signal(target: Target, timeout_s: float) -> RankStack:
    """Send the rank its announced stack signal and read what its handler appends to the
    stack file (from the size it had before; complete once it stops growing for 50 ms)."""
    rank, pid = target.rank, target.pid
    if not target.stack_signal or target.stack_file is None:
        return RankStack(rank, pid, "", "", error=f"{SIGNAL}: the rank announced no stack signal")
    from launcher import containment  # noqa: PLC0415 - with procs, the only one that signals

    path = target.stack_file
    before = _size(path)
    if not containment.is_alive(pid):
        return RankStack(rank, pid, "", "", error=f"{SIGNAL}: process {pid} is gone")
    containment.signal_pids([pid], target.stack_signal)
    deadline = time.monotonic() + timeout_s
    size, since = before, time.monotonic()
    while True:
        now = time.monotonic()
        current = _size(path)
        if current != size:
            size, since = current, now
        elif size > before and now - since >= _SETTLE_S:
            break
        if now > deadline:
            why = "no dump" if size <= before else "the dump never settled"
            return RankStack(rank, pid, "", "", error=f"{SIGNAL}: {why} within {timeout_s:g} s")
        if size <= before and not containment.is_alive(pid):
            return RankStack(rank, pid, "", "", error=f"{SIGNAL}: process {pid} ended")
        time.sleep(_POLL_S)
    with path.open("rb") as f:
        f.seek(before)
        text = f.read(size - before).decode("utf-8", "replace")
    return _stack(rank, pid, SIGNAL, text, parse_faulthandler(text))


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def take(
    target: Target,
    *,
    methods: Sequence[str] = METHODS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    py_spy: str | None = None,
    run: Runner | None = None,
) -> RankStack:
    """One rank's stack by the first of `methods` that works; when none does, a `RankStack`
    without frames whose `error` lists each method's reason. Never raises for a rank that
    cannot be read."""
    errors: list[str] = []
    for method in methods:
        if method == PY_SPY:
            exe = py_spy or find_py_spy()
            if exe is None:
                errors.append(f"{PY_SPY}: not installed")
                continue
            got = by_py_spy(target, exe, timeout_s, run or _capture)
        elif method == SIGNAL:
            got = by_signal(target, timeout_s)
        else:
            raise ValueError(f"unknown stack method {method!r}; use {METHODS}")
        if got.ok:
            return got
        errors.append(got.error)
    return RankStack(target.rank, target.pid, "", "", error="; ".join(errors))


def collect(
    targets: Iterable[Target],
    *,
    methods: Sequence[str] = METHODS,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    py_spy: str | None = None,
    run: Runner | None = None,
) -> dict[int, RankStack]:
    """Every target's stack (see `take`), all at once (one thread per rank), by rank.

    Takes at most about `timeout_s` per method tried. The ranks keep running: nothing here
    stops or kills them (py-spy pauses each for the moment it reads).
    """
    wanted = list(targets)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"unknown stack method {method!r}; use {METHODS}")
    results: dict[int, RankStack] = {}
    lock = threading.Lock()

    def one(target: Target) -> None:
        got = take(target, methods=methods, timeout_s=timeout_s, py_spy=py_spy, run=run)
        with lock:
            results[target.rank] = got

    threads = [
        threading.Thread(target=one, args=(t,), name=f"stack-{t.rank}", daemon=True) for t in wanted
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return dict(sorted(results.items()))


def write(folder: Path, stacks: Mapping[int, RankStack], hosts: Mapping[int, str]) -> list[Path]:
    """Write one `rank-<R>.txt` per rank into `folder` (created): a header line (rank, host,
    pid, method or the reason there is no stack), then the dump as taken. Returns the paths.
    Raises `OSError` when the folder cannot be written."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, stack in sorted(stacks.items()):
        host = hosts.get(rank, "")
        where = f" on {host}" if host else ""
        how = f"taken with {stack.method}" if stack.ok else f"no stack: {stack.error}"
        path = folder / f"rank-{rank}.txt"
        path.write_text(f"# rank {rank}{where}, pid {stack.pid}: {how}\n{stack.text}")
        paths.append(path)
    return paths
