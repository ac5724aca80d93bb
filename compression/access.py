"""What a job may read, checked each time a file is opened.

A process runs one job under one ``InputAccess``: the server's worker installs the operator's
policy (allowed roots, size limit, trusted formats) before the pipeline starts; library use and
``tpet run`` keep the default, which allows any path but still refuses special files (a FIFO
would block forever) and TorchScript teachers (a TorchScript file is code).

Checks happen when a file is opened, symlinks resolved at that moment, so a manifest line or a
symlink added after a job was submitted cannot lead a worker outside the roots.
"""

from __future__ import annotations

import os
import stat
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from compression.errors import InvalidInput

__all__ = ["InputAccess", "AccessDenied", "current", "install", "granted", "open_input",
           "read_input", "checked_path"]


class AccessDenied(InvalidInput):
    """A path lies outside the allowed roots (the service maps it to PERMISSION_DENIED)."""

    def __init__(self, problems: list[str] | str):
        super().__init__(problems, "input not allowed")


@dataclass(frozen=True)
class InputAccess:
    """roots: real directories a job may read under (None: any); max_bytes: the largest file
    a job may open (None: no limit); allow_torchscript: whether a TorchScript teacher (code)
    may be loaded at all."""

    roots: tuple[str, ...] | None = None
    max_bytes: int | None = None
    allow_torchscript: bool = False

    @classmethod
    def of(cls, roots: list[str] | tuple[str, ...] | None, max_bytes: int | None = None,
           allow_torchscript: bool = False) -> InputAccess:
        real = None if roots is None else tuple(
            os.path.realpath(os.path.expanduser(r)) for r in roots)
        return cls(real, max_bytes, allow_torchscript)

    def allows(self, real: str) -> bool:
        """Whether the already-resolved path ``real`` lies under a root."""
        return self.roots is None or any(
            real == root or real.startswith(root.rstrip(os.sep) + os.sep) for root in self.roots)


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


def checked_path(path: str | os.PathLike, what: str) -> Path:
    """The real path of ``path`` if the policy allows it; ``AccessDenied`` names ``what``."""
    real = os.path.realpath(os.path.expanduser(os.fspath(path)))
    access = current()
    if not access.allows(real):
        via = f" (it resolves to {real})" if real != os.fspath(path) else ""
        raise AccessDenied(f"{what} {os.fspath(path)!r}{via} is outside the allowed data roots "
                           f"({', '.join(access.roots or ())}); move it under one of them, or "
                           "ask the operator to add its directory to data_roots")
    return Path(real)


def open_input(path: str | os.PathLike, what: str) -> BinaryIO:
    """Open a regular file for reading, checked against the policy at this moment.

    The file is opened by its resolved path without following a final symlink, then
    ``fstat``-ed, so what was checked is what is read: a special file (FIFO, device, socket)
    or a file over the size limit is refused without reading a byte.
    """
    real = checked_path(path, what)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise InvalidInput(f"{what} {os.fspath(path)!r} does not exist") from None
    except OSError as exc:
        raise InvalidInput(f"{what} {os.fspath(path)!r} cannot be opened: "
                           f"{exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{what} {os.fspath(path)!r} is not a regular file "
                               f"({_kind(info.st_mode)}); give a file")
        limit = current().max_bytes
        if limit is not None and info.st_size > limit:
            raise InvalidInput(f"{what} {os.fspath(path)!r} is {info.st_size} bytes, over the "
                               f"limit of {limit} bytes; use a smaller file or ask the operator "
                               "to raise max_data_bytes")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(path: str | os.PathLike, what: str) -> bytes:
    """The whole content of ``path`` (see ``open_input``), read once."""
    with open_input(path, what) as f:
        return f.read()


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"
