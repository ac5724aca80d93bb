"""What a job may read, checked each time a file is opened.

A process runs one job under one ``InputAccess``: the server's worker installs the operator's
policy (allowed roots, size limit, trusted formats) before the pipeline starts; library use and
``tpet run`` keep the default, which allows any path but still refuses special files (a FIFO
would block forever) and TorchScript teachers (a TorchScript file is code).

Checks happen when a file is opened, symlinks resolved at that moment, so a manifest line or a
symlink added after a job was submitted cannot lead a worker outside the roots. After the open,
the real path of the open file itself is checked again (``/proc/self/fd``), so swapping a folder
on the way for a symlink between the check and the open does not help either.

A path may also be a URI (``compression.storage``): ``file://`` names a local file and takes
the local checks; an object (``s3://``, ``gs://``, ``https://``) must lie under one of the
policy's URI prefixes, which sit among its roots (``s3://bucket/prefix/``), and is read into
a local unnamed copy after its declared size is checked, so readers see a real file. A folder
of objects (an image folder, a manifest's images) is listed and read object by object
(``compression.data.remote_files``); Fashion-MNIST's folder is read from a local path only.

Every function takes an optional ``access``: a caller that checks on behalf of a job without
running it (the server, at submission) passes its policy instead of installing it.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from compression import storage
from compression.errors import ErrorKind, InvalidInput

__all__ = ["InputAccess", "AccessDenied", "DEFAULT_DECODED_BYTES", "current", "install",
           "require_uri", "granted", "open_input", "read_input", "read_upto", "checked_path",
           "list_dir", "walk_files", "special_kind", "decoded_limit", "exists", "local_or_uri",
           "checked_target"]

# The most bytes one split may decode into memory when the policy sets no max_bytes: a header
# that declares more is corrupt or hostile, and would otherwise be allocated before any check.
DEFAULT_DECODED_BYTES = 16 * 2**30
_PROC_FD = "/proc/self/fd"


class AccessDenied(InvalidInput):
    """A path lies outside the allowed roots: refused, not malformed (PERMISSION_DENIED)."""

    kind = ErrorKind.PERMISSION_DENIED

    def __init__(self, problems: list[str] | str):
        super().__init__(problems, "input not allowed")


@dataclass(frozen=True)
class InputAccess:
    """roots: real directories and URI prefixes a job may read under (None: any);
    max_bytes: the largest file a job may open, and the most bytes one split may decode
    (None: no file limit, and ``DEFAULT_DECODED_BYTES`` decoded); allow_torchscript: whether
    a TorchScript teacher (code) may be loaded at all."""

    roots: tuple[str, ...] | None = None
    max_bytes: int | None = None
    allow_torchscript: bool = False

    @classmethod
    def of(cls, roots: list[str] | tuple[str, ...] | None, max_bytes: int | None = None,
           allow_torchscript: bool = False) -> InputAccess:
        real = None if roots is None else tuple(_root(r) for r in roots)
        return cls(real, max_bytes, allow_torchscript)

    def allows(self, real: str) -> bool:
        """Whether the already-resolved path ``real`` lies under a root."""
        return self.roots is None or any(
            real == root or real.startswith(root.rstrip(os.sep) + os.sep)
            for root in self.roots if not storage.is_uri(root))

    def allows_uri(self, uri: storage.Uri) -> bool:
        """Whether the object ``uri`` lies under one of the URI prefixes."""
        return self.roots is None or any(
            storage.under(uri, storage.parse_uri(root, "URI prefix"))
            for root in self.roots if storage.is_uri(root))


def _root(root: str) -> str:
    """A local root made real; a URI prefix in its canonical form (file:// is a local root)."""
    if storage.is_uri(root):
        uri = storage.parse_uri(root, "URI prefix")
        if uri.scheme != "file":
            return str(uri)
        root = uri.fs_path
    return os.path.realpath(os.path.expanduser(root))


def _remote(path: str | os.PathLike, what: str) -> storage.Uri | None:
    """The object ``path`` names, or None for a local path (a file:// URI is one)."""
    if not storage.is_uri(path):
        return None
    uri = storage.parse_uri(os.fspath(path), what)
    return None if uri.scheme == "file" else uri


def _local(path: str | os.PathLike) -> str | os.PathLike:
    """``path`` with a file:// URI turned into its local path (checked by ``_remote``)."""
    return storage.parse_uri(path, "path").fs_path if storage.is_uri(path) else path


def checked_target(text: str, what: str, access: InputAccess | None = None) -> storage.Uri:
    """The checked URI a job writes to: a writable scheme (s3, gs, file), under the policy's
    URI prefixes, or for file:// under its local roots. The prefixes say where a job may
    touch object storage at all, reading or writing."""
    access = access or current()
    uri = storage.parse_uri(text, what, storage.WRITE_SCHEMES)
    if uri.scheme == "file":
        checked_path(uri.fs_path, what, access)
    else:
        require_uri(uri, what, access)
    return uri


def require_uri(uri: storage.Uri, what: str, access: InputAccess | None = None) -> None:
    """Refuse an object outside the policy's URI prefixes (the installed policy by default)."""
    access = access or current()
    if not access.allows_uri(uri):
        raise AccessDenied(f"{what} {uri} is outside the allowed data roots and URI prefixes "
                           f"({', '.join(access.roots or ())}); ask the operator to add its "
                           "bucket or prefix (e.g. s3://bucket/prefix/) to data_roots")


def _local_only(path: str | os.PathLike, what: str, access: InputAccess) -> str | os.PathLike:
    """``path`` as a local path; an object is refused, after the policy had its say."""
    uri = _remote(path, what)
    if uri is None:
        return _local(path)
    require_uri(uri, what, access)
    raise InvalidInput(f"{what} {uri} is in object storage, but this input is read as a local "
                       "folder or file tree; copy it to a local path, or use a source that "
                       "reads objects (npz, webdataset, imagefolder, manifest)")


def local_or_uri(path: str | os.PathLike) -> Path | str:
    """What a reader should hold for a spec's path: an object URI as given, anything else
    (file:// included) as a local ``Path`` with ``~`` expanded."""
    return os.fspath(path) if _remote(path, "path") else Path(_local(path)).expanduser()


def exists(path: str | os.PathLike, what: str, access: InputAccess | None = None) -> bool:
    """Whether ``path`` (a local path or URI) exists, once the policy allows it; for an object
    a missing bucket or denied access raises ``InvalidInput`` rather than answering."""
    access = access or current()
    uri = _remote(path, what)
    if uri is None:
        return os.path.exists(checked_path(path, what, access))
    require_uri(uri, what, access)
    return storage.exists(uri, what)


_current = InputAccess()


def current() -> InputAccess:
    """The policy of this process's job."""
    return _current


def install(access: InputAccess) -> None:
    """Make ``access`` the policy of every later open in this process (and forked workers)."""
    global _current
    _current = access


@contextmanager
def granted(access: InputAccess) -> Iterator[InputAccess]:
    """``access`` for the duration of a block, then the previous policy again."""
    before = current()
    install(access)
    try:
        yield access
    finally:
        install(before)


def decoded_limit(access: InputAccess | None = None) -> int:
    """The most bytes one split may decode into memory under ``access`` (default: current)."""
    limit = (access or current()).max_bytes
    return DEFAULT_DECODED_BYTES if limit is None else limit


def checked_path(path: str | os.PathLike, what: str, access: InputAccess | None = None) -> Path:
    """The real path of ``path`` if the policy allows it; ``AccessDenied`` names ``what``."""
    path = _local_only(path, what, access or current())
    if "\0" in os.fspath(path):  # the OS cannot take it, and realpath would raise ValueError
        raise InvalidInput(f"{what} {os.fspath(path)!r} contains a NUL character")
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    _require(real, os.fspath(path), what, access or current())
    return Path(real)


def _require(real: str, shown: str, what: str, access: InputAccess) -> None:
    if not access.allows(real):
        via = f" (it resolves to {real})" if real != shown else ""
        raise AccessDenied(f"{what} {shown!r}{via} is outside the allowed data roots "
                           f"({', '.join(access.roots or ())}); move it under one of them, or "
                           "ask the operator to add its directory to data_roots")


def special_kind(path: str | os.PathLike) -> str | None:
    """'a FIFO', 'a socket', ... when ``path`` (symlinks followed) is neither a regular file
    nor a directory; None otherwise, or when it does not exist. Never opens the file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else _kind(mode)


def open_input(path: str | os.PathLike, what: str,
               access: InputAccess | None = None) -> BinaryIO:
    """Open a regular file for reading, checked against the policy at this moment.

    An object URI is read into a local unnamed copy (``storage.open_copy``) once it lies
    under an allowed prefix and its declared size is within the limit.

    The file is opened by its resolved path without following a final symlink, non-blocking,
    then ``fstat``-ed, and the real path of what was opened is checked again: a special file
    (FIFO, device, socket), a file over the size limit or one reached through a folder swapped
    for a symlink is refused without reading a byte.
    """
    access = access or current()
    uri = _remote(path, what)
    if uri is not None:
        require_uri(uri, what, access)
        return storage.open_copy(uri, what, access.max_bytes, DEFAULT_DECODED_BYTES)
    shown = os.fspath(path)
    real = str(checked_path(path, what, access))
    kind = special_kind(real)  # refused before opening: opening a device can act on it
    if kind is not None:
        raise InvalidInput(f"{what} {shown!r} is not a regular file ({kind}); give a file")
    fd = _open_fd(real, shown, what, os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        _confirm_opened(fd, real, shown, what, access)
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {shown!r} is not a regular file "
                               f"({_kind(info.st_mode)}); give a file")
        if access.max_bytes is not None and info.st_size > access.max_bytes:
            raise InvalidInput(f"{what} {shown!r} is {info.st_size} bytes, over the limit of "
                               f"{access.max_bytes} bytes; use a smaller file or ask the "
                               "operator to raise max_data_bytes")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike, what: str, access: InputAccess | None = None,
               limit: int | None = None) -> bytes:
    """The whole content of ``path`` (see ``open_input``), read once and at most ``limit``
    bytes (default ``decoded_limit``): a file that grows while it is read cannot make it
    unbounded."""
    limit = decoded_limit(access) if limit is None else limit
    with open_input(path, what, access) as f:
        data = read_upto(f, limit + 1)
    if len(data) > limit:
        raise InvalidInput(f"{what} {os.fspath(path)!r} holds more than {limit} bytes; use a "
                           "smaller file or ask the operator to raise max_data_bytes")
    return bytes(data)


def read_upto(f: BinaryIO, n: int, chunk: int = 1 << 24) -> bytearray:
    """Up to ``n`` bytes of ``f``, read in chunks: ``f.read(n)`` would allocate all ``n`` at
    once, and ``n`` often comes from a header that may declare far more than the file holds."""
    data = bytearray()
    while len(data) < n:
        more = f.read(min(chunk, n - len(data)))
        if not more:
            break
        data += more
    return data


def list_dir(path: str | os.PathLike, what: str,
             access: InputAccess | None = None) -> list[tuple[str, Path]]:
    """(name, real path) of every entry of the folder ``path``, sorted by name.

    Each entry is resolved and checked when listed (a symlink in an allowed folder may point
    anywhere); readers open it with ``open_input``, which checks it again.
    """
    return [(name, Path(real)) for name, real, _ in _scan(path, what, access or current())]


def walk_files(path: str | os.PathLike, what: str,
               access: InputAccess | None = None) -> list[Path]:
    """Every entry below the folder ``path`` that is not a folder, as listed (``path/a/b``),
    sorted. Like ``Path.rglob``, symlinked folders are not descended into (so a loop cannot
    hang the walk); every entry, followed or not, must resolve inside the roots."""
    access = access or current()
    found: list[Path] = []
    stack = [Path(_local_only(path, what, access))]
    while stack:
        folder = stack.pop()
        for name, real, descend in _scan(folder, what, access):
            if descend:
                stack.append(folder / name)
            elif not os.path.isdir(real):
                found.append(folder / name)
    return sorted(found)


def _scan(path: str | os.PathLike, what: str,
          access: InputAccess) -> list[tuple[str, str, bool]]:
    """(name, real path, whether it is a real folder) per entry of ``path``, each checked."""
    path = _local_only(path, what, access)
    shown = os.fspath(path)
    real = str(checked_path(path, what, access))
    fd = _open_fd(real, shown, what, os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _confirm_opened(fd, real, shown, what, access)
        with os.scandir(fd) as entries:
            listed = sorted((e.name, e.is_symlink(), e.is_dir(follow_symlinks=False))
                            for e in entries)
    except OSError as exc:
        raise InvalidInput(f"cannot list {what} {shown!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    out = []
    for name, link, folder in listed:
        # Below the real folder just opened, only a symlink's path needs resolving; that
        # keeps a walk over a large data set at one stat per entry.
        entry = os.path.realpath(os.path.join(real, name)) if link else os.path.join(real, name)
        _require(entry, os.path.join(shown, name), what, access)
        out.append((name, entry, folder and not link))
    return out


def _open_fd(real: str, shown: str, what: str, flags: int) -> int:
    try:
        return os.open(real, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | flags)
    except FileNotFoundError:
        raise InvalidInput(f"{what} {shown!r} does not exist") from None
    except NotADirectoryError:
        raise InvalidInput(f"{what} {shown!r} is not a directory") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {shown!r} cannot be opened: {exc.strerror or exc}") from None


def _confirm_opened(fd: int, real: str, shown: str, what: str, access: InputAccess) -> None:
    """Check the real path of the open ``fd``: a folder on the way to ``real`` may have been
    swapped for a symlink after ``real`` was resolved. Without /proc, resolve ``real`` again."""
    if access.roots is None:
        return
    try:
        opened = os.readlink(f"{_PROC_FD}/{fd}")
    except OSError:
        opened = os.path.realpath(real)
    _require(opened, shown, what, access)


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
