"""The checkpoint folder of a job, and the step of its latest checkpoint.

The folder is the one SageMaker syncs with S3 (`CheckpointConfig`): a `--checkpoint-dir`
(`LAUNCHER_CHECKPOINT_DIR`) when given, else `LocalPath` of
`<base>/input/config/checkpointconfig.json` when that file exists, else `<base>/checkpoints`
(`/opt/ml/checkpoints`). Every rank of every attempt gets it in `LAUNCHER_CHECKPOINT_DIR`
(`collectives.checkpoint` reads it). The launcher never creates, cleans or writes it: it only
lists the names in it (`launcher.contract.latest_checkpoint_step`) to tell whether an attempt
advanced the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from launcher.errors import ConfigError

CONFIG_FILE = "checkpointconfig.json"
LOCAL_PATH = "LocalPath"
DEFAULT_FOLDER = "checkpoints"


def folder(setting: Path | None, base: Path) -> Path:
    """The checkpoint folder: `setting`, else the tree's `checkpointconfig.json` LocalPath,
    else `<base>/checkpoints`. Raises `ConfigError` (exit 2) naming the file and key when
    `checkpointconfig.json` exists but is not a JSON object whose `LocalPath` (if present) is
    a non-empty absolute path."""
    if setting is not None:
        return setting
    path = base / "input" / "config" / CONFIG_FILE
    if not path.exists():
        return base / DEFAULT_FOLDER
    # Lazily: a job without the file (every `launcher run`) imports none of the tree's parsers.
    from launcher.sagemaker import files  # noqa: PLC0415

    raw = files.read_object(path)
    if LOCAL_PATH not in raw:
        return base / DEFAULT_FOLDER
    value = raw[LOCAL_PATH]
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ConfigError(
            path,
            LOCAL_PATH,
            f"must be an absolute path, not {files.shown(value)}",
            hint="SageMaker writes /opt/ml/checkpoints/ there",
        )
    return Path(value)
