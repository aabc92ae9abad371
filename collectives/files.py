"""Where a training script reads and writes on SageMaker, and an atomic `save` on the primary.

Paths follow the SageMaker training contract: `SM_MODEL_DIR`, `SM_OUTPUT_DATA_DIR` and
`SM_CHANNEL_<NAME>` when set, else the same place under `SAGEMAKER_BASE_DIR` (default
`/opt/ml`). Checkpoints have no SageMaker variable; they live in `<base>/checkpoints`, the
platform's default local path for checkpoint sync. These functions read the environment on
every call (they are not on a hot path) and never create or check directories.

`save` writes only on the primary rank (global rank 0) and never leaves a half-written file:
it writes a hidden temporary file in the target's directory, fsyncs it, renames it over the
target and fsyncs the directory. A crash at any point leaves either the old file or the new
one (plus, at worst, a `.<name>.*.tmp` file that the next save does not reuse). A save runs
inside a progress section named "save", so the launcher's hang timing pauses while a large
checkpoint is written (docs/hangs.md).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

from collectives import env
from launcher.contract import CHECKPOINT_DIR, progress_section

# SageMaker training variables (sagemaker-contract.md §5). Not rank variables, so they are
# not part of launcher.contract.
BASE_DIR = "SAGEMAKER_BASE_DIR"
MODEL_DIR = "SM_MODEL_DIR"
OUTPUT_DATA_DIR = "SM_OUTPUT_DATA_DIR"
CHANNEL_PREFIX = "SM_CHANNEL_"
DEFAULT_BASE = "/opt/ml"


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def base_dir(environ: Mapping[str, str] | None = None) -> Path:
    """The SageMaker tree: `SAGEMAKER_BASE_DIR`, else /opt/ml."""
    return Path(_environ(environ).get(BASE_DIR) or DEFAULT_BASE)


def model_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the model goes: `SM_MODEL_DIR`, else `<base>/model`."""
    e = _environ(environ)
    return Path(e.get(MODEL_DIR) or base_dir(e) / "model")


def output_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Extra outputs (uploaded with the job): `SM_OUTPUT_DATA_DIR`, else `<base>/output/data`."""
    e = _environ(environ)
    return Path(e.get(OUTPUT_DATA_DIR) or base_dir(e) / "output" / "data")


def checkpoint_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Local checkpoints: the folder the launcher resolved (`LAUNCHER_CHECKPOINT_DIR`: its
    `--checkpoint-dir`, else SageMaker's checkpointconfig.json LocalPath), else
    `<base>/checkpoints` (SageMaker's CheckpointConfig default)."""
    e = _environ(environ)
    return Path(e.get(CHECKPOINT_DIR) or base_dir(e) / "checkpoints")


def channel(name: str, environ: Mapping[str, str] | None = None) -> Path:
    """An input channel: `SM_CHANNEL_<NAME>` (name upper-cased, hyphens kept), else
    `<base>/input/data/<name>`. Raises `ValueError` for an empty name or one with a slash."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"bad channel name {name!r}")
    e = _environ(environ)
    return Path(e.get(CHANNEL_PREFIX + name.upper()) or base_dir(e) / "input" / "data" / name)


def _target(name: str | os.PathLike[str], environ: Mapping[str, str] | None) -> Path:
    rel = Path(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise ValueError(f"{str(name)!r} must be a relative path inside the model directory")
    return model_dir(environ) / rel


def atomic_write(path: Path, write: Callable[[IO[bytes]], None], mode: int = 0o644) -> None:
    """Write `path` through `write(file)` so that readers see the old content or the new, whole.

    Creates missing parent directories. On any error the temporary file is removed and the
    error propagates; `path` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), mode)  # mkstemp makes 0600; the serving side may be another user
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # The rename is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(
    obj: object, name: str | os.PathLike[str] = "model.pt", environ: Mapping[str, str] | None = None
) -> Path | None:
    """Save `obj` as `<model_dir>/<name>` on the primary rank, atomically; return the path.

    A `torch.jit.ScriptModule` is written with `torch.jit.save` (loadable by `torch.jit.load`
    without the training code); anything else with `torch.save`. Other ranks write nothing and
    get `None`; no barrier is implied. `name` may contain subdirectories, never `..`. Raises
    `ValueError` for a bad name and whatever serialisation or the filesystem raise.
    """
    if env.current().rank != 0:
        return None
    import torch  # noqa: PLC0415 - keep `collectives.files` usable for paths without torch

    path = _target(name, environ)
    with progress_section("save"):
        if isinstance(obj, torch.jit.ScriptModule):
            atomic_write(path, lambda f: torch.jit.save(obj, f))
        else:
            atomic_write(path, lambda f: torch.save(obj, f))
    return path


def save_file(
    source: str | os.PathLike[str],
    name: str | os.PathLike[str],
    environ: Mapping[str, str] | None = None,
) -> Path | None:
    """Copy the file `source` to `<model_dir>/<name>` on the primary rank, atomically.

    For files that must travel with the model, such as `code/inference.py` for the serving
    container. Other ranks copy nothing and get `None`.
    """
    if env.current().rank != 0:
        return None
    path = _target(name, environ)
    with progress_section("save"), Path(source).open("rb") as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f))
    return path
