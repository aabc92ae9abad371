"""The job's directories: each must exist (or be creatable), take a write, and have free space.

`rows(host, dirs, min_free_gb)` writes and removes one small file in each directory (a real
write: a read-only bind mount, a read-only file system or a full disk all fail it, where
`os.access` would pass a read-only mount for root) and reads the free space with `statvfs`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from launcher.preflight.rows import FAIL, PASS, Row

PROBE_BYTES = 4096


def rows(host: str, dirs: Mapping[str, Path], min_free_gb: float) -> list[Row]:
    """One `dir.writable` and one `dir.free` row per directory (named by its role: model,
    output, checkpoints); a directory that cannot be written has no free-space row."""
    out = []
    for role, path in dirs.items():
        began = time.monotonic()
        problem = _write_problem(path)
        seconds = time.monotonic() - began
        where = f"{role} {path}"
        if problem:
            out.append(
                Row("dir.writable", host, "no", "", "writable", FAIL, where, problem, seconds)
            )
            continue
        out.append(Row("dir.writable", host, "yes", "", "writable", PASS, where, "", seconds))
        stat = os.statvfs(path)
        free = stat.f_bavail * stat.f_frsize / 1e9
        verdict = PASS if free >= min_free_gb else FAIL
        detail = "" if verdict == PASS else f"{free:.2f} GB free in {path}"
        out.append(
            Row(
                "dir.free",
                host,
                round(free, 2),
                "GB",
                f">= {min_free_gb:g}",
                verdict,
                where,
                detail,
            )
        )
    return out


def _write_problem(path: Path) -> str:
    """ "" when a file can be created, written, synced and removed in `path`, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".preflight-{os.getpid()}-{os.urandom(4).hex()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"\0" * PROBE_BYTES)
            os.fsync(fd)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        return f"cannot write in {path}: {e.strerror or e}"
    return ""
