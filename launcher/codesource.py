"""Bring the user's code into `code/` (sagemaker-contract §8), safely.

Only when `code/` is empty (images that bake code in are left alone), from the
`sagemaker_submit_directory` hyperparameter: a local directory (copied), a local tar archive
(extracted after every member is checked), any other local file (copied), or an `s3://` URI
(downloaded with boto3, an optional extra imported only here).

Unlike the toolkit, which renames hostile members and extracts the rest with warnings, an
archive with a member that would land outside `code/` (absolute path, `..`, a link leaving the
tree, a device or FIFO) is refused as a whole with a `ConfigError` naming the member: a
half-extracted, silently altered tree is worse than a clear failure.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # tarfile costs `train` milliseconds of imports: only archives need it
    import tarfile

from launcher.errors import ConfigError, LauncherError

SOURCE_KEY = "sagemaker_submit_directory"


def prepare(
    code_dir: Path, source: str, hps_file: Path, environ: Mapping[str, str] | None = None
) -> str:
    """Fill `code_dir` from `source` when it is empty; returns what was done, for the log.

    `environ` supplies the S3 settings (AWS_REGION, SAGEMAKER_REGION, S3_ENDPOINT_URL) for an
    `s3://` source. Raises `ConfigError` (naming `hps_file` and `sagemaker_submit_directory`,
    or the archive and the member) when the source is missing, cannot be copied or holds an
    unsafe member, and `LauncherError` when an S3 download fails.
    """
    code_dir.mkdir(parents=True, exist_ok=True)
    if any(code_dir.iterdir()):
        return f"{code_dir} is not empty: using the code already there"
    if not source or Path(source) == code_dir:
        return f"{code_dir} is empty and no {SOURCE_KEY} is set"
    if source.startswith("s3://"):
        with tempfile.TemporaryDirectory(prefix="launcher-code-") as tmp:
            archive = Path(tmp) / "sourcedir.tar.gz"
            _download_s3(source, archive, hps_file, environ)
            extract_tar(archive, code_dir, source)
        return f"downloaded and extracted {source} into {code_dir}"
    path = Path(source)
    try:
        if path.is_dir():
            # Links are followed, as the toolkit's copytree does: code/ gets the files they
            # point to, so nothing in code/ links out of the tree.
            shutil.copytree(path, code_dir, dirs_exist_ok=True)
            return f"copied {path} into {code_dir}"
        if path.is_file():
            import tarfile  # noqa: PLC0415 - see above

            if tarfile.is_tarfile(path):
                extract_tar(path, code_dir, source)
                return f"extracted {path} into {code_dir}"
            shutil.copy2(path, code_dir / path.name)
            return f"copied {path} into {code_dir}"
    except shutil.Error as e:
        # copytree gathers per-file failures (a dangling link, an unreadable file).
        first = e.args[0][0] if e.args and isinstance(e.args[0], list) and e.args[0] else e
        raise ConfigError(
            hps_file,
            SOURCE_KEY,
            f"cannot copy {source!r}: {first}",
            hint="check that it exists and is readable on this host",
        ) from None
    except OSError as e:
        raise ConfigError(
            hps_file,
            SOURCE_KEY,
            f"cannot copy {source!r}: {e}",
            hint="check that it exists and is readable on this host",
        ) from None
    raise ConfigError(
        hps_file,
        SOURCE_KEY,
        f"{source!r} does not exist",
        hint="set it to a directory, a tarball or an s3:// URI that exists on this host",
    )


def _download_s3(uri: str, dest: Path, hps_file: Path, environ: Mapping[str, str] | None) -> None:
    try:
        import boto3  # noqa: PLC0415 - optional extra, 150 ms to import: only when needed
    except ImportError:
        raise ConfigError(
            hps_file,
            SOURCE_KEY,
            f"{uri} needs boto3, which is not installed",
            hint="pip install 'ml-launcher[s3]'",
        ) from None
    env = environ or {}
    bucket, _, key = uri[len("s3://") :].partition("/")
    # The toolkit's choices: region from AWS_REGION, else SAGEMAKER_REGION; S3_ENDPOINT_URL.
    client = boto3.client(
        "s3",
        region_name=env.get("AWS_REGION") or env.get("SAGEMAKER_REGION") or None,
        endpoint_url=env.get("S3_ENDPOINT_URL") or None,
    )
    try:
        client.download_file(bucket, key.lstrip("/"), str(dest))
    except Exception as e:  # botocore's many classes (credentials, network, 404): all one story
        raise LauncherError(
            f"cannot download {uri} ({SOURCE_KEY}): {e}",
            hint="check the URI, the credentials, and AWS_REGION or S3_ENDPOINT_URL",
        ) from None


def member_path(member: tarfile.TarInfo) -> PurePosixPath:
    """The member's name as a relative POSIX path; `.` and `./` give the empty path."""
    return PurePosixPath(member.name)


def check_member(member: tarfile.TarInfo, dest: Path) -> str | None:
    """Why `member` may not be extracted into `dest`, or None when it is safe.

    POSIX semantics, like tarfile's own: a colon or a backslash is an ordinary character,
    except that a `..` segment is refused between either separator. A name the toolkit would
    have rewritten to keep it inside (absolute, `..`, a leading backslash) or skipped (links
    leaving the tree, devices, FIFOs) is refused instead.
    """
    name = member_path(member)
    if name.is_absolute() or member.name.startswith("\\"):
        return "is an absolute path"
    if ".." in member.name.replace("\\", "/").split("/"):  # either separator: Windows-made
        return "contains '..'"
    real_dest = dest.resolve()
    target = (dest / name).resolve()
    if not target.is_relative_to(real_dest):
        return "lands outside the code directory"
    if member.isdev() or member.isfifo():
        return "is a device or FIFO"
    if member.issym() or member.islnk():
        link = PurePosixPath(member.linkname)
        base = dest / name.parent if member.issym() else dest
        if link.is_absolute() or not (base / link).resolve().is_relative_to(real_dest):
            return f"links outside the code directory ({member.linkname})"
    return None


def extract_tar(archive: Path, dest: Path, label: str) -> None:
    """Extract `archive` into `dest` after checking every member; refuse it whole otherwise.

    The member for the archive's root (`.` or `./`, as `tar -C src -czf x .` writes) is not
    extracted: it would only change the mode of `dest` itself. Raises `ConfigError` naming
    the archive and the member, before anything is written.
    """
    import tarfile  # noqa: PLC0415 - see the top of the module

    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                problem = check_member(member, dest)
                if problem:
                    raise ConfigError(
                        label,
                        member.name,
                        f"archive member {problem}",
                        hint=f"the archive comes from {SOURCE_KEY}; rebuild it without that member",
                    )
            members = [m for m in members if member_path(m).parts]
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # Python < 3.11.4: our own checks above are the filter
                tar.extractall(dest, members=members)  # noqa: S202
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConfigError(
            label,
            None,
            f"cannot be extracted: {e}",
            hint="rebuild it, e.g. tar -C src -czf sourcedir.tar.gz .",
        ) from None
