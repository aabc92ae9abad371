"""Bring the user's code into `code/` (sagemaker-contract §8), safely.

Only when `code/` is empty (images that bake code in are left alone), from the
`sagemaker_submit_directory` hyperparameter: a local directory (copied), a local tar archive
(extracted after every member is checked), any other local file (copied), or an `s3://` URI
(downloaded with boto3, an optional extra imported only here, then extracted like a local one).

Unlike the toolkit, which renames hostile members and extracts the rest with warnings, an
archive with a member that would land outside `code/` is refused as a whole with a
`ConfigError` naming the archive and the member (one line): a half-extracted, silently altered
tree is worse than a clear failure.

How an archive is extracted (`extract_tar`). Python's own `tarfile` filters are not trusted:
the `data` filter of the Python we run (3.11.7) is the one of CVE-2025-4517, CVE-2025-4138 and
CVE-2024-12718, where chains of members that each look harmless (links through links, links
whose resolution runs past PATH_MAX) write outside the destination. Instead:

1. The archive is read through once, headers only, before anything is written. Every member
   is checked against a model of the tree the archive builds, member by member, in order:
   names are relative, without `..`, within NAME_MAX/PATH_MAX in the final `code/`; only
   regular files, directories, symlinks and hard links (no devices, FIFOs or unknown types);
   no member path and no hard link target goes through a symlink (or a file) that an earlier
   member made; a member never changes the kind of an earlier one (a directory replaced by a
   symlink, a symlink overwritten by a file); a hard link names a regular file extracted before
   it (never a symlink); a symlink is relative and, resolved step by step through the links of
   the model as the kernel would (`..` after a link applies where the link leads), never
   leaves the root, not even for one step, neither when it is met nor in the finished tree (a
   later member cannot retarget it), within `_MAX_STEPS` steps (a loop is refused).
2. The members are written into a fresh private directory beside `code/` (on its file system,
   so the final move is a rename), with directory file descriptors and `O_NOFOLLOW` at every
   step: extraction never follows a link, so what the model says is what the kernel does.
   Files get the `data` filter's modes (no setuid/setgid/sticky, no group/other write, owner
   read-write) and their mtime; ownership and directory modes are not applied. A later member
   of the same name and kind replaces an earlier one (unlinked first, never written through).
3. The result is walked again on disk (file descriptors, no path length limit): only regular
   files, directories and symlinks; every symlink resolves inside; no regular file has a hard
   link outside the tree (its link count equals its occurrences in the tree).
4. The top-level entries are renamed into `code/` (created when missing, so `code/` keeps its
   own inode and mode when it exists). The private directory is made beside the directory
   `code/` resolves to, or, when that is a mount point or its parent is not writable, inside
   it (hidden), the only place left on its file system. A failure while moving moves back
   what was moved.

A refused archive, an error or an interrupt (KeyboardInterrupt included) at any step leaves
`code/` as it was (absent, or empty) and removes the private directory and any parent of
`code/` it had to create.

Bounds (module constants, no setting): at most `MAX_MEMBERS` members, `MAX_BYTES` bytes of
regular files, and `MAX_HEADER_BYTES` of headers (`tarfile` reads a pax or long-name header
into memory whole); each is checked while the headers are read, so a compressed bomb is
refused after reading its headers, before a byte is written. The file system of `code/`
must also have room for the files (free blocks and inodes, from `statvfs`). A bigger code
tree belongs in the image (a non-empty `code/` is used as it is) or in a directory source,
which is copied without these bounds. Refusing a hostile archive costs CPU time in proportion
to its headers, at most `_MAX_STEPS` per symlink and pass (three passes). An `s3://` archive
is downloaded whole into a temporary directory first (removed on every path); its size is
not bounded before the download.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:  # tarfile costs `train` milliseconds of imports: only archives need it
    import tarfile

from launcher.errors import ConfigError, LauncherError

SOURCE_KEY = "sagemaker_submit_directory"

MAX_MEMBERS = 100_000  # members of one archive
MAX_BYTES = 16 * 2**30  # bytes of regular files (their sizes as the headers declare them)
MAX_HEADER_BYTES = 256 * 2**20  # bytes of headers tarfile may read while listing members

_PATH_MAX = 4096  # Linux, including the terminating NUL
_NAME_MAX = 255  # bytes in one path component
_MAX_STEPS = 256  # components walked to resolve one symlink, links expanded (ELOOP is 40 links)
_SHOWN = 200  # characters of a member name an error shows (names can be 4 KiB)
_HINT = f"the archive comes from {SOURCE_KEY}; rebuild it without that member"
_HINT_EMPTY = "an archive is only extracted into an empty code directory"
_HINT_WHOLE = (
    f"the archive comes from {SOURCE_KEY}; put a code tree this big in the image, or pass a"
    " directory"
)

_Kind = Literal["directory", "file", "symlink"]


def prepare(
    code_dir: Path, source: str, hps_file: Path, environ: Mapping[str, str] | None = None
) -> str:
    """Fill `code_dir` from `source` when it is empty; returns what was done, for the log.

    `environ` supplies the S3 settings (AWS_REGION, SAGEMAKER_REGION, S3_ENDPOINT_URL) for an
    `s3://` source. Raises `ConfigError` (naming `hps_file` and `sagemaker_submit_directory`,
    or the archive and the member) when the source is missing, cannot be copied or holds an
    unsafe member, and `LauncherError` when an S3 download fails. `code_dir` exists when this
    returns; an archive that is refused or fails leaves it as it was (absent, or empty).
    """
    if code_dir.is_dir() and any(code_dir.iterdir()):
        return f"{code_dir} is not empty: using the code already there"
    if not source or Path(source) == code_dir:
        code_dir.mkdir(parents=True, exist_ok=True)
        return f"{code_dir} is empty and no {SOURCE_KEY} is set"
    if source.startswith("s3://"):
        import tempfile  # noqa: PLC0415 - only when code is fetched: `train` starts without it

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
            if is_tar(path):
                extract_tar(path, code_dir, source)
                return f"extracted {path} into {code_dir}"
            code_dir.mkdir(parents=True, exist_ok=True)
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


# --- reading archives ----------------------------------------------------------------------


class _Refused(Exception):
    """An archive member that may not be extracted: `name` (as in the archive) and why."""

    def __init__(self, name: str | None, problem: str, hint: str = "") -> None:
        super().__init__(problem)
        self.name = name
        self.problem = problem
        self.hint = hint or (_HINT if name is not None else _HINT_WHOLE)


class _Stream(Protocol):
    """What tarfile needs of the (decompressed) archive."""

    def read(self, size: int = ..., /) -> bytes: ...
    def seek(self, pos: int, whence: int = ..., /) -> int: ...
    def tell(self) -> int: ...
    def close(self) -> None: ...


class _BoundedReads:
    """The decompressed archive, as tarfile reads it; reads are counted against a budget.

    While `budget` is not None every read spends it, and a read beyond it raises `_Refused`
    before it happens: while members are listed tarfile reads only headers (data is skipped
    with seeks), and a pax or GNU long-name header is read whole, so a header claiming
    gigabytes would otherwise be read into memory.
    """

    def __init__(self, raw: _Stream) -> None:
        self.raw = raw
        self.budget: int | None = MAX_HEADER_BYTES

    def read(self, size: int = -1, /) -> bytes:
        if self.budget is not None:
            if size < 0 or size > self.budget:
                raise _Refused(None, f"has headers of more than {MAX_HEADER_BYTES} bytes")
            data = self.raw.read(size)
            self.budget -= len(data)
            return data
        return self.raw.read(size)

    def write(self, b: bytes, /) -> int:
        raise OSError("read only")

    def seek(self, pos: int, whence: int = os.SEEK_SET, /) -> int:
        return self.raw.seek(pos, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self.raw.close()


@contextlib.contextmanager
def _decompressed(archive: Path) -> Iterator[_Stream]:
    """`archive` decompressed (gzip, bzip2, xz/lzma by their magic bytes, else as it is)."""
    with archive.open("rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        # The lzma "alone" format has no magic; its first byte (0x5d) may start a tar name.
        alone = magic.startswith(b"\x5d") and not _is_tar_header(raw.read(512))
        raw.seek(0)
        # The decompressors do not close a file object they were given: `raw` is closed here.
        if magic.startswith(b"\x1f\x8b"):
            import gzip  # noqa: PLC0415 - only archives need it

            with gzip.GzipFile(fileobj=raw, mode="rb") as unzipped:
                yield unzipped
        elif magic.startswith(b"BZh"):
            import bz2  # noqa: PLC0415 - only archives need it

            with bz2.BZ2File(raw, "rb") as unzipped:
                yield unzipped
        elif magic.startswith(b"\xfd7zXZ\x00") or alone:
            import lzma  # noqa: PLC0415 - only archives need it

            with lzma.LZMAFile(raw, "rb") as unzipped:
                yield unzipped
        else:
            yield raw


def _decompression_errors() -> tuple[type[BaseException], ...]:
    """What reading a corrupt archive raises: tarfile's errors, OSError and EOFError (gzip,
    bz2, a truncated file), zlib's and lzma's errors."""
    import tarfile  # noqa: PLC0415 - see the top of the module
    import zlib  # noqa: PLC0415 - only archives need it

    errors: list[type[BaseException]] = [tarfile.TarError, EOFError, OSError, zlib.error]
    with contextlib.suppress(ImportError):
        import lzma  # noqa: PLC0415 - only archives need it

        errors.append(lzma.LZMAError)
    return tuple(errors)


def is_tar(path: Path) -> bool:
    """Whether `path` (maybe compressed) starts with a valid tar header; reads 512 bytes.

    Unlike `tarfile.is_tarfile`, which reads the first member whole (a pax header may claim
    gigabytes), this reads one block. A file that cannot be read is not an archive.
    """
    import tarfile  # noqa: PLC0415 - see the top of the module

    try:
        with _decompressed(path) as stream:
            return _is_tar_header(stream.read(tarfile.BLOCKSIZE))
    except _decompression_errors():
        return False


def _is_tar_header(block: bytes) -> bool:
    import tarfile  # noqa: PLC0415 - see the top of the module

    try:
        tarfile.TarInfo.frombuf(block, tarfile.ENCODING, "surrogateescape")
    except tarfile.HeaderError:
        return False
    return True


@contextlib.contextmanager
def _open_tar(archive: Path) -> Iterator[tuple[tarfile.TarFile, _BoundedReads]]:
    import tarfile  # noqa: PLC0415 - see the top of the module

    with _decompressed(archive) as stream:
        bounded = _BoundedReads(stream)
        with tarfile.open(fileobj=bounded, mode="r:") as tar:
            yield tar, bounded


def _list_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member, headers only, within MAX_MEMBERS and MAX_BYTES; raises `_Refused`."""
    members: list[tarfile.TarInfo] = []
    total = 0
    while (member := tar.next()) is not None:
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise _Refused(None, f"has more than {MAX_MEMBERS} members")
        if member.isreg():
            total += member.size
            if total > MAX_BYTES:
                raise _Refused(None, f"holds more than {MAX_BYTES} bytes of files")
    return members


# --- the model: what the archive builds, member by member ----------------------------------


@dataclass(frozen=True)
class _Node:
    """One entry of the tree an archive builds: its kind, a symlink's target, its member."""

    kind: _Kind
    target: str = ""
    name: str = ""  # the member that made it ("" for a directory implied by a member's path)


_Parts = tuple[str, ...]
_Lookup = Callable[[_Parts], "_Node | None"]


def _parts(name: str) -> _Parts:
    """A member name as path components: empty and `.` components dropped (`./a//b` is a/b)."""
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _shown(name: str) -> str:
    """`name` for an error line: printable, and shortened in the middle when very long."""
    text = name if name.isprintable() else repr(name)[1:-1]
    if len(text) > _SHOWN:
        half = _SHOWN // 2
        text = f"{text[:half]}...{text[-half:]}"
    return text


def _kind(member: tarfile.TarInfo) -> _Kind:
    if member.isdir():
        return "directory"
    return "symlink" if member.issym() else "file"


def check_member(member: tarfile.TarInfo) -> str | None:
    """Why `member` may not be extracted, on its own, or None when it may (see `_Model.add`).

    POSIX semantics, like tarfile's own: a colon or a backslash is an ordinary character,
    except that a `..` segment is refused between either separator. A name the toolkit would
    have rewritten to keep it inside (absolute, `..`, a leading backslash) or skipped (links
    leaving the tree, devices, FIFOs) is refused instead. A symlink is resolved as if no other
    member were a link; whether a member is safe among the others is `_Model.add`'s question.
    """
    problem = _check_alone(member)
    if problem is None and member.issym():
        return _link_problem(lambda _: None, _parts(member.name), member.linkname)
    return problem


def _check_alone(member: tarfile.TarInfo) -> str | None:
    """`check_member` but for where a symlink leads, which depends on the other members."""
    name = member.name
    if name.startswith(("/", "\\")):
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):  # either separator: Windows-made
        return "contains '..'"
    if "\x00" in name:
        return "has a NUL byte in its name"
    if member.isdev() or member.isfifo():
        return "is a device or FIFO"
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        return f"is of an unsupported type ({member.type!r})"
    parts = _parts(name)
    if any(len(os.fsencode(p)) > _NAME_MAX for p in parts):
        return f"has a path component longer than {_NAME_MAX} bytes"
    if member.issym() or member.islnk():
        link = member.linkname
        shown = _shown(link)
        if not link or "\x00" in link:
            return f"has an empty or invalid link target ({shown})"
        if link.startswith("/"):
            return f"links outside the code directory ({shown})"
        if member.islnk() and ".." in link.split("/"):
            # A hard link's target is a member name: `..` in it is never needed.
            return f"links outside the code directory ({shown})"
        if len(os.fsencode(link)) >= _PATH_MAX:
            return f"has a link target longer than {_PATH_MAX - 1} bytes"
    return None


def _resolve(lookup: _Lookup, base: _Parts, target: str) -> str | None:
    """Why the symlink in directory `base` with `target` is unsafe, or None when it is not.

    Walks `target` as the kernel would, expanding the links `lookup` knows as they are met
    (so `..` after a link applies to where the link leads), and refuses as soon as one step
    leaves the root, even if a later step would come back: the tree is moved after this check,
    and a path through its old parent would not lead back. A name `lookup` does not know is
    taken as a plain directory: a link made there later is seen by the pass over the finished
    tree. A file met before the last step would fail with ENOTDIR; it is walked like a
    directory, which refuses at least as much. Bounded by `_MAX_STEPS`.
    """
    stack = list(base)
    pending = deque(_parts(target))
    steps = 0
    while pending:
        steps += 1
        if steps > _MAX_STEPS:
            return "loop"
        part = pending.popleft()
        if part == "..":
            if not stack:
                return "outside"
            stack.pop()
            continue
        stack.append(part)
        node = lookup(tuple(stack))
        if node is not None and node.kind == "symlink":
            if node.target.startswith("/"):
                return "outside"
            stack.pop()
            pending.extendleft(reversed(_parts(node.target)))
    return None


def _link_problem(lookup: _Lookup, parts: _Parts, target: str) -> str | None:
    why = _resolve(lookup, parts[:-1], target)
    if why == "outside":
        return f"links outside the code directory ({_shown(target)})"
    if why == "loop":
        return f"is a symlink that cannot be resolved in {_MAX_STEPS} steps ({_shown(target)})"
    return None


class _Model:
    """The tree an archive builds, member by member: physical paths (never through a link)."""

    def __init__(self, dest: Path) -> None:
        self.nodes: dict[_Parts, _Node] = {}
        # The final path of a member is code/ + name: it must stay under PATH_MAX.
        self.prefix = len(os.fsencode(dest.absolute())) + 1

    def add(self, member: tarfile.TarInfo) -> str | None:
        """Record `member`; why it may not be extracted after the earlier ones, or None."""
        problem = _check_alone(member)
        if problem:
            return problem
        parts = _parts(member.name)
        if not parts:  # the archive root (`.`), as `tar -C src -czf x .` writes it
            return None if member.isdir() else "would replace the code directory itself"
        length = self.prefix + len(os.fsencode("/".join(parts)))
        if length >= _PATH_MAX:
            return f"would have a path of {length} bytes, over the limit of {_PATH_MAX - 1}"
        problem = self._through(parts[:-1], "goes")
        if problem:
            return problem
        kind = _kind(member)
        old = self.nodes.get(parts)
        if old is not None and old.kind != kind:
            return f"would replace the earlier {old.kind} {_shown('/'.join(parts))}"
        if member.islnk():
            target = _parts(member.linkname)
            if target == parts:
                return "is a hard link to itself"
            problem = self._through(target[:-1], "links")
            if problem:
                return problem
            linked = self.nodes.get(target)
            if linked is None or linked.kind != "file":
                what = linked.kind if linked else "not a member before it"
                return f"is a hard link to {_shown(member.linkname)}, which is {_an(what)}"
        for i in range(1, len(parts)):
            self.nodes.setdefault(parts[:i], _Node("directory"))
        self.nodes[parts] = _Node(kind, member.linkname if member.issym() else "", member.name)
        if member.issym():
            return _link_problem(self.nodes.get, parts, member.linkname)
        return None

    def _through(self, parents: _Parts, verb: str) -> str | None:
        """Why a path under `parents` is unsafe: one of them is a symlink or not a directory."""
        for i in range(1, len(parents) + 1):
            node = self.nodes.get(parents[:i])
            if node is None:
                return None  # nothing below it exists either
            if node.kind == "symlink":
                return f"{verb} through the symlink {_shown('/'.join(parents[:i]))}"
            if node.kind != "directory":
                return f"{verb} through {_shown('/'.join(parents[:i]))}, which is not a directory"
        return None

    def final_problem(self) -> tuple[str, str] | None:
        """The first symlink of the finished tree that leads outside: (member, why)."""
        for parts, node in self.nodes.items():
            if node.kind == "symlink":
                problem = _link_problem(self.nodes.get, parts, node.target)
                if problem:
                    return node.name, problem
        return None


def _an(what: str) -> str:
    return what if what.startswith("not ") else f"a {what}"


# --- writing -------------------------------------------------------------------------------

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(root_fd: int, parts: _Parts, *, create: bool) -> int:
    """A descriptor of root/parts, made when `create`; never through a symlink (ELOOP)."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _file_mode(member: tarfile.TarInfo) -> int:
    """The `data` filter's mode: no high bits or group/other write; owner read-write."""
    mode = member.mode & 0o755
    if not mode & 0o100:
        mode &= ~0o111
    return mode | 0o600


def _write_member(tar: tarfile.TarFile, member: tarfile.TarInfo, root_fd: int) -> None:
    parts = _parts(member.name)
    parent = _open_dir(root_fd, parts[:-1], create=True)
    name = parts[-1]
    try:
        if member.isdir():
            try:
                os.mkdir(name, 0o777, dir_fd=parent)
            except FileExistsError:
                if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                    raise
            return
        # A member of the same name and kind before it is replaced, never written through.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=parent)
        if member.issym():
            os.symlink(member.linkname, name, dir_fd=parent)
        elif member.islnk():
            target = _parts(member.linkname)
            source_dir = _open_dir(root_fd, target[:-1], create=False)
            try:
                os.link(
                    target[-1],
                    name,
                    src_dir_fd=source_dir,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
            finally:
                os.close(source_dir)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=parent)
            with open(fd, "wb") as out:  # noqa: PTH123 - a descriptor, not a path
                data = tar.extractfile(member)
                if data is not None:
                    shutil.copyfileobj(data, out)
                out.flush()
                os.fchmod(out.fileno(), _file_mode(member))
                with contextlib.suppress(OverflowError, ValueError, OSError):
                    os.utime(out.fileno(), (member.mtime, member.mtime))
    finally:
        os.close(parent)


# --- checking what was written -------------------------------------------------------------


def _verify(root: str) -> None:
    """Walk the extracted tree on disk; raise `_Refused` naming the first unsafe entry.

    Independent of the model: only regular files, directories and symlinks; every symlink
    resolves inside `root` (with the links found on disk); no regular file is linked from
    outside the tree.
    """
    found: dict[_Parts, _Node] = {}
    seen: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) -> names in the tree
    links: dict[tuple[int, int], tuple[int, str]] = {}  # -> (st_nlink, first name)

    def fail(error: OSError) -> None:
        raise error

    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, onerror=fail):
        base = _parts(dirpath[len(root) :])
        for entry in (*dirnames, *filenames):
            parts = (*base, entry)
            rel = "/".join(parts)
            st = os.stat(entry, dir_fd=dirfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                found[parts] = _Node("directory", "", rel)
            elif stat.S_ISLNK(st.st_mode):
                found[parts] = _Node("symlink", os.readlink(entry, dir_fd=dirfd), rel)
            elif stat.S_ISREG(st.st_mode):
                found[parts] = _Node("file", "", rel)
                inode = (st.st_dev, st.st_ino)
                seen[inode] = seen.get(inode, 0) + 1
                links.setdefault(inode, (st.st_nlink, rel))
            else:
                raise _Refused(rel, "is a special file after extraction")
    for parts, node in found.items():
        if node.kind == "symlink":
            problem = _link_problem(found.get, parts, node.target)
            if problem:
                raise _Refused(node.name, problem)
    for inode, (nlink, rel) in links.items():
        if nlink > seen[inode]:
            raise _Refused(rel, "is hard-linked to a file outside the code directory")


# --- putting it in place -------------------------------------------------------------------


def _staging_parent(dest: Path) -> Path:
    """Where the private directory goes: beside `dest`, or inside it when it is a mount point."""
    real = Path(os.path.realpath(dest))
    if real.is_dir() and real.stat().st_dev != real.parent.stat().st_dev:
        return real
    return real.parent


def _check_room(where: Path, members: list[tarfile.TarInfo]) -> None:
    """Refuse before writing when the file system of `where` lacks blocks or inodes."""
    while not where.exists() and where != where.parent:
        where = where.parent
    fs = os.statvfs(where)
    block = fs.f_frsize or 4096
    need = sum(-(-m.size // block) * block for m in members if m.isreg())
    free = fs.f_bavail * block
    if need > free:
        raise _Refused(None, f"needs {need} bytes but {where} has {free} free")
    if fs.f_files and len(members) > fs.f_favail:
        raise _Refused(
            None, f"has {len(members)} members but {where} has {fs.f_favail} inodes free"
        )


def _make_parents(dest: Path, made: list[Path]) -> None:
    """Create the missing parents of `dest`, outermost first, appending each to `made`."""
    for parent in reversed(dest.parents):
        if not parent.exists():
            parent.mkdir()
            made.append(parent)


def _move_into(staging: str, dest: Path) -> None:
    """Rename every top-level entry of `staging` into the empty `dest`; all or nothing."""
    skip = Path(staging).name
    src = os.open(staging, _DIR_FLAGS)
    try:
        dst = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if [n for n in os.listdir(dst) if n != skip]:  # noqa: PTH208 - a descriptor
                raise _Refused(None, f"cannot be extracted: {dest} is not empty", _HINT_EMPTY)
            moved: list[str] = []
            try:
                for name in os.listdir(src):  # noqa: PTH208 - a descriptor
                    os.rename(name, name, src_dir_fd=src, dst_dir_fd=dst)
                    moved.append(name)
            except BaseException:
                for name in reversed(moved):  # same file system: renaming back cannot fill it
                    with contextlib.suppress(OSError):
                        os.rename(name, name, src_dir_fd=dst, dst_dir_fd=src)
                raise
        finally:
            os.close(dst)
    finally:
        os.close(src)


def extract_tar(archive: Path, dest: Path, label: str) -> None:
    """Extract `archive` into `dest` (absent or empty) after checking every member.

    See the module docstring for the checks and the bounds. The member for the archive's root
    (`.` or `./`) is not extracted: it would only change the mode of `dest` itself. Raises
    `ConfigError` naming `label` and the member (or only `label` when the archive as a whole is
    unreadable, too big, or does not fit), and then `dest`, its parents and the file system
    beside it are as they were.
    """
    try:
        with _open_tar(archive) as (tar, bounded):
            members = _list_members(tar)
            bounded.budget = None  # headers are read; data reads are chunked by copyfileobj
            model = _Model(dest)
            for member in members:
                problem = model.add(member)
                if problem:
                    raise _Refused(member.name, problem)
            late = model.final_problem()
            if late:
                raise _Refused(*late)
            parent = _staging_parent(dest)
            _check_room(parent, members)
            _extract_checked(tar, members, dest, parent)
    except _Refused as e:
        key = _shown(e.name) if e.name is not None else None
        problem = f"archive member {e.problem}" if e.name is not None else e.problem
        raise ConfigError(label, key, problem, hint=e.hint) from None
    except _decompression_errors() as e:
        raise ConfigError(
            label,
            None,
            f"cannot be extracted: {e}",
            hint="rebuild it, e.g. tar -C src -czf sourcedir.tar.gz .",
        ) from None


def _extract_checked(
    tar: tarfile.TarFile, members: list[tarfile.TarInfo], dest: Path, parent: Path
) -> None:
    """Write, verify and move the checked members; undo everything on any failure."""
    import tempfile  # noqa: PLC0415 - only when an archive is extracted

    if dest.is_dir() and any(dest.iterdir()):
        raise _Refused(None, f"cannot be extracted: {dest} is not empty", _HINT_EMPTY)
    made: list[Path] = []
    made_dest = False
    staging: str | None = None
    try:
        _make_parents(dest, made)
        try:
            staging = tempfile.mkdtemp(prefix=".launcher-code-", dir=parent)
        except OSError:
            if parent == dest or not dest.is_dir():
                raise
            # code/ is writable but the folder holding it is not (a read-only image layer,
            # another owner): inside code/ is the only place left on its file system.
            staging = tempfile.mkdtemp(prefix=".launcher-code-", dir=dest)
        root_fd = os.open(staging, _DIR_FLAGS)
        try:
            for member in members:
                if not _parts(member.name):
                    continue
                try:
                    _write_member(tar, member, root_fd)
                except OSError as e:
                    raise _Refused(member.name, f"cannot be extracted: {e}") from None
        finally:
            os.close(root_fd)
        _verify(staging)
        if not dest.exists():
            dest.mkdir()
            made_dest = True
        _move_into(staging, dest)
    except BaseException:
        if made_dest:
            with contextlib.suppress(OSError):
                dest.rmdir()
        for made_parent in reversed(made):
            with contextlib.suppress(OSError):
                made_parent.rmdir()
        raise
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
