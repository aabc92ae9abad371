"""The launcher's side of the progress files: create one per rank, name it to the rank, read it.

Layout and the rank's side: `launcher.contract` (PROGRESS_FILE, PROGRESS_SIZE, P_*). The
launcher creates every file before the ranks start (`prepare`), so a rank only maps it; each
attempt gets new files (new inodes: a rank left over from an earlier attempt keeps writing
into its own, never into the new one).

Reading uses one `pread` per rank per sample, not a mapping: a rank (or anything else) that
truncates its file would make a read through a mapping raise SIGBUS in the launcher, while
`pread` just returns less. At two samples a second, eight ranks cost about 0.01 % of a core
(bench/bench_progress.py).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from launcher import contract
from launcher.hangs.verdict import RankProgress

_WORDS = struct.Struct("=8Q")  # host byte order, as the rank writes them
_WORD = struct.Struct("=Q")
_NAME_END = contract.SECTION_NAME_OFFSET + contract.SECTION_NAME_SIZE


@dataclass(frozen=True, slots=True)
class RankFiles:
    """One rank's progress file and stack file."""

    rank: int
    progress: Path
    stacks: Path

    def env(self) -> dict[str, str]:
        """The variables that name both files to the rank (add them to its environment)."""
        return {contract.PROGRESS_FILE: str(self.progress), contract.STACK_FILE: str(self.stacks)}


def prepare(
    folder: Path, ranks: Iterable[int], *, tracer_pid: int | None = None
) -> dict[int, RankFiles]:
    """Create `folder` (mode 0700 when new) and, for every rank, a fresh progress file
    (`rank-<R>.progress`: the magic, every counter zero, `tracer_pid`, by default this
    process, as the one the rank lets ptrace it) and an empty stack file (`rank-<R>.stacks`),
    replacing any earlier ones. Raises `OSError`."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    words = [0] * (contract.PROGRESS_SIZE // 8)
    words[contract.P_TRACER_PID] = os.getpid() if tracer_pid is None else tracer_pid
    blank = contract.PROGRESS_MAGIC + struct.pack(f"={len(words) - 1}Q", *words[1:])
    files: dict[int, RankFiles] = {}
    for rank in ranks:
        entry = RankFiles(rank, folder / f"rank-{rank}.progress", folder / f"rank-{rank}.stacks")
        for path, data in ((entry.progress, blank), (entry.stacks, b"")):
            tmp = path.with_name(f".{path.name}.new")
            tmp.write_bytes(data)
            tmp.chmod(0o600)
            tmp.replace(path)  # a new inode: an old rank's mapping stays on the old file
        files[rank] = entry
    return files


def decode(rank: int, data: bytes) -> RankProgress:
    """A progress file's bytes as a sample; anything that is not a whole progress file (short,
    another magic) reads as a rank that has not attached."""
    if len(data) < contract.PROGRESS_SIZE or data[:8] != contract.PROGRESS_MAGIC:
        return RankProgress(rank)
    _, count, last, depth, since, pid, signum, attached = _WORDS.unpack_from(data)
    name = ""
    if depth:
        raw = data[contract.SECTION_NAME_OFFSET : _NAME_END]
        name = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    (exiting,) = _WORD.unpack_from(data, contract.P_EXITING_NS * _WORD.size)
    return RankProgress(rank, count, last, attached, depth, since, name, pid, signum, exiting)


class ProgressReader:
    """Samples the progress files of a set of ranks. Not thread-safe: one sampler.

    A file that does not exist yet, or cannot be opened, reads as a rank that has not attached;
    opening is retried at the next sample.
    """

    def __init__(self, files: Mapping[int, Path]) -> None:
        self._paths = dict(sorted(files.items()))
        self._fds: dict[int, int] = {}

    def read(self) -> tuple[RankProgress, ...]:
        """One sample of every rank, in rank order."""
        samples = []
        for rank, path in self._paths.items():
            fd = self._fds.get(rank)
            if fd is None:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    samples.append(RankProgress(rank))
                    continue
                self._fds[rank] = fd
            try:
                data = os.pread(fd, contract.PROGRESS_SIZE, 0)
            except OSError:
                data = b""
            samples.append(decode(rank, data))
        return tuple(samples)

    def close(self) -> None:
        """Close every file. Idempotent."""
        fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> ProgressReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
