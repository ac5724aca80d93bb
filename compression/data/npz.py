"""The ``npz`` source: an .npz archive read without trusting its headers.

Layout: ``x`` uint8 (0-255) or float (0-1) images, ``y`` integer labels, optional ``group``
(attribute values, ints or strings) and optional ``class_names`` (strings). ``x`` may be
[N, H, W], [N, H, W, C] or [N, C, H, W]: a 4-d array whose last axis is 1 or 3 is read as NHWC,
any other 4-d array as NCHW (so [N, 3, 32, 3] is NHWC; store such odd shapes as NCHW with a
last axis other than 1 or 3, or as [N, H, W]).

Every member's .npy header (shape, dtype) is read and checked against the job's memory limit
(``compression.access.decoded_limit``) before the array is allocated: a header may declare
terabytes in a file of a few hundred bytes. Members other than these four are never read.
"""

from __future__ import annotations

import math
import os
import struct
import tokenize
import zipfile
import zlib
from pathlib import Path

import numpy as np

from compression import access
from compression.data.raw import (RawSplit, check_declared, check_not_empty, int_label_classes,
                                  require_exists)
from compression.errors import InvalidInput

__all__ = ["read_npz", "load_npz"]

_KEYS = ("x", "y", "group", "class_names")
# What a malformed archive or .npy header makes zipfile / numpy raise: each means "not a
# valid file", never a bug of ours (the header is parsed with ast.literal_eval, and on failure
# again through tokenize, which raises its own TokenError).
_MALFORMED = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, zlib.error,
              ValueError, SyntaxError, RecursionError, NotImplementedError, RuntimeError,
              struct.error, OverflowError, KeyError, IndexError, TypeError, tokenize.TokenError)


def read_npz(path: Path, classes: tuple[str, ...] | None) -> RawSplit:
    """An .npz with x, y and optional group / class_names (see the module docstring)."""
    arrays = load_npz(path)
    for key in ("x", "y"):
        if key not in arrays:
            raise InvalidInput(f"{path} has no array {key!r} (it has {sorted(arrays)}); "
                               "save with np.savez(path, x=images, y=labels)")
    x, y = _npz_images(arrays["x"], path), arrays["y"]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise InvalidInput(f"{path}: y must be a 1-d array of integer class ids; "
                           f"got shape {y.shape}, dtype {y.dtype}")
    if len(x) != len(y):
        raise InvalidInput(f"{path}: x has {len(x)} samples but y has {len(y)}; they must match")
    check_not_empty(len(y), str(path))
    attr = _npz_strings(arrays, "group", path, len(y))
    declared = _npz_strings(arrays, "class_names", path, None)
    if declared is not None and len(set(declared.tolist())) != len(declared):
        raise InvalidInput(f"{path}: class_names {declared.tolist()} has duplicates")
    y = _int64_labels(y, path)
    names = int_label_classes(y, None if declared is None else tuple(declared.tolist()),
                              str(path), classes)
    return RawSplit(x, y, attr, names, str(path))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays x, y, group and class_names that ``path`` holds (those it has), each
    header checked before its array is read; any other member is left unread."""
    require_exists(path, "npz file", "check data.path / data.test_path")
    with access.open_input(path, "npz file") as f:
        size = os.fstat(f.fileno()).st_size
        try:
            with zipfile.ZipFile(f) as archive:
                members = {n.removesuffix(".npy"): n for n in archive.namelist()
                           if n.endswith(".npy")}
                headers = {k: _header(archive, members[k], path, k, size) for k in _KEYS
                           if k in members}
                check_declared(sum(h[2] for h in headers.values()), str(path),
                               f"arrays {_shapes(headers)}")
                return {k: _array(archive, members[k]) for k in headers}
        except InvalidInput:
            raise
        except _MALFORMED as exc:
            raise InvalidInput(f"cannot read {path} as .npz: {type(exc).__name__}: {exc}; "
                               "save it with np.savez(path, x=images, y=labels)") from None


def _header(archive: zipfile.ZipFile, member: str, path: Path, key: str,
            archive_size: int) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, bytes) that ``member``'s .npy header declares, checked for sense and
    against the member's own size: numpy allocates the whole array before reading it."""
    info = archive.getinfo(member)
    if info.compress_size > archive_size or (
            info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size):
        raise InvalidInput(f"{path}: {key} is truncated (its zip entry claims more bytes than "
                           "the file holds)")
    with archive.open(member) as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise InvalidInput(f"{path}: {key} is stored in .npy format {version}; save it with "
                               "np.savez (format 1.0 or 2.0)")
        room = info.file_size - fp.tell()
    if dtype.hasobject:
        raise InvalidInput(f"cannot read {path}: {key} holds Python objects; store strings as "
                           "a unicode array (np.array(values, dtype=str)), not as Python objects")
    if dtype.kind not in "biufUS" or dtype.fields is not None or dtype.subdtype is not None:
        raise InvalidInput(f"{path}: {key} has dtype {dtype}; store plain numbers or strings")
    if any(d < 0 for d in shape):
        raise InvalidInput(f"{path}: {key} declares the impossible shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > room:
        raise InvalidInput(f"{path}: {key} declares shape {list(shape)} {dtype} ({nbytes} "
                           f"bytes) but holds {max(room, 0)} bytes; the file is truncated or "
                           "corrupt")
    return shape, dtype, nbytes


def _array(archive: zipfile.ZipFile, member: str) -> np.ndarray:
    # Reopened: read_array parses the (already checked) header again, then reads exactly the
    # declared bytes; a short member raises ValueError, a corrupted one a CRC error.
    with archive.open(member) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def _shapes(headers: dict[str, tuple[tuple[int, ...], np.dtype, int]]) -> str:
    return ", ".join(f"{k} {list(shape)} {dtype}" for k, (shape, dtype, _) in headers.items())


def _npz_images(x: np.ndarray, path: Path) -> np.ndarray:
    """x as stored -> [N, C, H, W] uint8 (see the module docstring for the layouts)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InvalidInput(f"{path}: x has shape {x.shape}; expected [N,H,W], [N,H,W,C] or "
                           "[N,C,H,W] with C 1 or 3")
    if len(x) and (x.shape[2] == 0 or x.shape[3] == 0):
        raise InvalidInput(f"{path}: images are {x.shape[3]}x{x.shape[2]} pixels; every image "
                           "needs at least one pixel")
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise InvalidInput(f"{path}: float x must lie in [0, 1] (no NaN or infinity); "
                               "store uint8 0-255 instead")
        x = np.rint(x * 255)
    elif not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
        raise InvalidInput(f"{path}: x has dtype {x.dtype}; store uint8 (0-255) or float (0-1)")
    return np.ascontiguousarray(x, dtype=np.uint8)


def _int64_labels(y: np.ndarray, path: Path) -> np.ndarray:
    """y as int64; a uint64 label beyond int64 would wrap to a valid-looking id."""
    if y.dtype == np.uint64 and len(y) and int(y.max()) > np.iinfo(np.int64).max:
        raise InvalidInput(f"{path}: label {int(y.max())} is out of range; class ids must be "
                           "0..C-1")
    return y.astype(np.int64)


def _npz_strings(arrays: dict[str, np.ndarray], key: str, path: Path,
                 n: int | None) -> np.ndarray | None:
    """Optional 1-d array ``key`` as str values: [n] (or any length when n is None)."""
    if key not in arrays:
        return None
    values = arrays[key]
    if values.ndim != 1 or (n is not None and len(values) != n):
        raise InvalidInput(f"{path}: {key} has shape {values.shape}; expected [{n or 'C'}]")
    if values.dtype.kind == "S":
        try:
            return np.char.decode(values, "utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"{path}: {key} is not UTF-8 text ({exc})") from None
    if values.dtype.kind not in "iuU":
        raise InvalidInput(f"{path}: {key} has dtype {values.dtype}; use ints or strings")
    return values.astype(str)
