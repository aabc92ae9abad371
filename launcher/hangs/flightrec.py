"""torch's flight recorder for every rank: the variables to set, and the dumps found afterwards.

The flight recorder keeps the last N collectives of every process group in a ring buffer and,
with NCCL, dumps it when the watchdog sees a collective time out (or on demand). It is off by
default (buffer size 0); torch's tutorial recommends 2000 entries. We turn it on, with dumps
going into the job's log directory, unless the user chose otherwise:

| variable (current name, older name) | ours |
|---|---|
| `TORCH_FR_BUFFER_SIZE`, `TORCH_NCCL_TRACE_BUFFER_SIZE` | 2000 |
| `TORCH_NCCL_DUMP_ON_TIMEOUT` | 1 |
| `TORCH_FR_DUMP_TEMP_FILE`, `TORCH_NCCL_DEBUG_INFO_TEMP_FILE` | `<log dir>/flightrec/rank_` |

torch appends the global rank to the dump prefix (`rank_3`). A variable with two names is one
setting: torch reads the current name first and the older one after, so when the user set
either name (even to the empty string) we set neither, else ours would silently win over
theirs. Otherwise only the current name is set: torch 2.13 prints a deprecation warning on
every rank's start for an older name it finds, gloo jobs included. A torch too old to know the
current names gets no flight recorder from us (set the older names yourself there).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from pathlib import Path

BUFFER_SIZE = 2000
FOLDER = "flightrec"
PREFIX = "rank_"
TORCH_DEFAULT_PREFIX = "/tmp/nccl_trace_rank_"  # noqa: S108 - torch's own default, for finding

BUFFER_VARS = ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE")
DUMP_ON_TIMEOUT_VARS = ("TORCH_NCCL_DUMP_ON_TIMEOUT",)
DUMP_FILE_VARS = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")


def folder(log_dir: Path) -> Path:
    """Where the ranks' dumps go: `<log dir>/flightrec` (the launcher creates it)."""
    return log_dir / FOLDER


def environment(
    user: Mapping[str, str], log_dir: Path, *, buffer_size: int = BUFFER_SIZE
) -> dict[str, str]:
    """The flight-recorder variables to add to a rank's environment `user` (what the rank would
    get without them): only settings the user left unset, under their current name. Pure."""
    if buffer_size < 0:
        raise ValueError(f"flight-recorder buffer size {buffer_size!r} must be >= 0")
    ours: dict[str, str] = {}
    for names, value in (
        (BUFFER_VARS, str(buffer_size)),
        (DUMP_ON_TIMEOUT_VARS, "1"),
        (DUMP_FILE_VARS, str(folder(log_dir) / PREFIX)),
    ):
        if not any(name in user for name in names):
            ours[names[0]] = value
    return ours


def dump_prefix(env: Mapping[str, str]) -> str:
    """The dump prefix a rank with environment `env` uses (torch's order of names, then its
    default)."""
    for name in DUMP_FILE_VARS:
        if env.get(name):
            return env[name]
    return TORCH_DEFAULT_PREFIX


def find_dumps(prefixes: Iterable[str], *, since: float | None = None) -> tuple[Path, ...]:
    """The dump files present for `prefixes` (each `<dir>/<stem>`: the files in `<dir>` whose
    name starts with `<stem>`), sorted, each once; with `since` (a `time.time()`), only those
    modified since then (torch's default prefix is in /tmp, shared with other jobs).
    Unreadable folders and files are skipped."""
    found: set[Path] = set()
    for prefix in prefixes:
        where = Path(prefix)
        parent, stem = where.parent, where.name
        with contextlib.suppress(OSError):
            for entry in parent.iterdir():
                if not entry.name.startswith(stem):
                    continue
                with contextlib.suppress(OSError):
                    info = entry.stat()
                    if entry.is_file() and (since is None or info.st_mtime >= since):
                        found.add(entry)
    return tuple(sorted(found))
