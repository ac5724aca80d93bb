"""The ``webdataset`` source: samples from WebDataset tar shards, local or in object storage.

``data.path`` (and test_path, holdout_path) name shards: one path or URI, brace patterns
(``s3://bucket/train-{000000..000009}.tar``, ``shard-{a,b}.tar``) and several patterns joined
by ``::``, as WebDataset writes them. A shard is an uncompressed tar; consecutive members that
share a key (the member path up to the first '.' of its name) form one sample, as in the
WebDataset format. A sample holds one image (``.png``, ``.jpg`` or ``.jpeg``), its class id
(``.cls``: an integer as text) and optionally its subgroup (``.group``: text, for
``subgroups.by: attribute``); other members (``.json``, ``.txt``...) are skipped unread.

Every shard is opened through ``compression.access`` (allowed roots and URI prefixes, size
checked before reading) and read one at a time; every member's size is checked before it is
read, and images are decoded with the image sources' own checks as they come, so memory holds
decoded images, never a whole split's shards.

``index_webdataset`` reads the shards the same way but decodes nothing: it keeps each image's
byte range in its shard and reads its header (format, size, mode), for the streaming path,
which decodes a sample when a batch needs it.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np

from compression import access
from compression.data.images import IMAGE_SUFFIXES, decode_image
from compression.data.index import ImageIndex, PackedNames, image_shape, probe_image
from compression.data.raw import RawSplit, check_not_empty, int_label_classes
from compression.errors import InvalidInput

__all__ = ["MAX_SHARDS", "expand_shards", "read_webdataset", "index_webdataset"]

MAX_SHARDS = 100_000  # more is a typo in a brace range, and would list a useless number of files
_IMAGE_EXTS = tuple(s.lstrip(".") for s in IMAGE_SUFFIXES)
_FIELD_BYTES = {"cls": 32, "group": 1024}  # text fields: anything longer is not a label
# WebDataset's rule: the key is everything up to the first '.' of the file name.
_NAME = re.compile(r"^((?:.*/|)[^./][^.]*)\.([^/]*)$")
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"([0-9]{1,9})\.\.([0-9]{1,9})")
_INT = re.compile(r"-?[0-9]{1,18}")


def expand_shards(pattern: str, what: str = "data.path") -> list[str]:
    """Every shard ``pattern`` names, in order: '::' separates patterns, '{a..b}' and
    '{x,y}' expand (zero-padded as written). No file is touched."""
    shards: list[str] = []
    for part in pattern.split("::"):
        if not part.strip():
            raise InvalidInput(f"{what} {pattern!r} has an empty pattern between '::'")
        shards += _expand(part.strip(), pattern, what)
        if len(shards) > MAX_SHARDS:
            raise InvalidInput(f"{what} {pattern!r} names more than {MAX_SHARDS} shards; "
                               "check its brace ranges")
    return shards


def _expand(text: str, pattern: str, what: str) -> list[str]:
    match = _BRACE.search(text)
    if match is None or "{" in text[:match.start()] or "}" in text[:match.start()]:
        if match is not None or "{" in text or "}" in text:
            raise InvalidInput(f"{what} {pattern!r} has unbalanced or nested braces; use "
                               "{000..009} or {a,b}")
        return [text]
    options = _options(match.group(1), pattern, what)
    rests = _expand(text[match.end():], pattern, what)
    if len(options) * len(rests) > MAX_SHARDS:
        raise InvalidInput(f"{what} {pattern!r} names more than {MAX_SHARDS} shards; check "
                           "its brace ranges")
    return [text[:match.start()] + o + r for o in options for r in rests]


def _options(body: str, pattern: str, what: str) -> list[str]:
    span = _RANGE.fullmatch(body)
    if span:
        lo, hi = span.groups()
        if int(hi) < int(lo) or int(hi) - int(lo) >= MAX_SHARDS:
            raise InvalidInput(f"{what} {pattern!r}: range {{{body}}} must go up, by at most "
                               f"{MAX_SHARDS} shards")
        padded = any(len(s) > 1 and s[0] == "0" for s in (lo, hi))
        width = max(len(lo), len(hi)) if padded else 0
        return [f"{i:0{width}d}" for i in range(int(lo), int(hi) + 1)]
    if "," in body:
        return body.split(",")
    raise InvalidInput(f"{what} {pattern!r}: {{{body}}} is neither a range like {{000..009}} "
                       "nor a list like {a,b}")


@dataclass
class _Split:
    """What the shards of one split gave so far. read_left: shard bytes it may still read
    (the policy's max_bytes for the shards together, like a folder's files; None: no
    limit); decoded_left: bytes its decoded images may still take. indexing: keep each
    image's place (shard, offset, length) and header shape instead of its pixels."""

    read_left: int | None
    decoded_left: int
    indexing: bool = False
    shard: int = 0  # the shard being read, as a position in the pattern's list
    spans: list[tuple[int, int, int]] = field(default_factory=list)  # (shard, offset, length)
    shapes: list[tuple[int, int, int]] = field(default_factory=list)  # (H, W, C) per image
    images: list[np.ndarray] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    groups: list[str | None] = field(default_factory=list)
    where: list[str] = field(default_factory=list)

    def read(self, n: int, what: str) -> None:
        if self.read_left is not None:
            self.read_left -= n
            if self.read_left < 0:
                raise InvalidInput(f"{what} takes the split's shards past "
                                   f"{access.current().max_bytes} bytes, the most a job may "
                                   "read; use fewer shards, or ask the operator to raise "
                                   "max_data_bytes")

    def decoded(self, n: int, what: str) -> None:
        self.decoded_left -= n
        if self.decoded_left < 0:
            raise InvalidInput(f"{what} takes the split past the {access.decoded_limit()} "
                               "bytes a job may load; use fewer or smaller images, set "
                               "data.image_size, or ask the operator to raise max_data_bytes")


def read_webdataset(pattern: str, size: int, classes: tuple[str, ...] | None,
                    what: str = "data.path") -> RawSplit:
    """x [N, C, H, W] uint8, class ids and subgroups of every sample of the shards
    ``pattern`` names; ``classes`` (train's names) for the other splits, None for train."""
    state = _Split(access.current().max_bytes, access.decoded_limit())
    _read_shards(pattern, size, what, state)
    y, names, attr = _labels(state, pattern, classes)
    return RawSplit(_stack(state.images, state.where), y, attr, names, pattern)


def index_webdataset(pattern: str, size: int, classes: tuple[str, ...] | None,
                     what: str = "data.path") -> RawSplit:
    """As ``read_webdataset``, but x is an ``ImageIndex``: each image's byte range in its
    shard and the split's decoded shape; no image is decoded."""
    state = _Split(access.current().max_bytes, access.decoded_limit(), indexing=True)
    shards = _read_shards(pattern, size, what, state)
    y, names, attr = _labels(state, pattern, classes)
    spans = np.asarray(state.spans, np.int64).reshape(-1, 3)
    index = ImageIndex(PackedNames.of(shards), spans[:, 0].copy(), spans[:, 1].copy(),
                       spans[:, 2].copy(), image_shape(state.shapes, state.where),
                       size, pattern)
    return RawSplit(index, y, attr, names, pattern)


def _read_shards(pattern: str, size: int, what: str, state: _Split) -> list[str]:
    shards = expand_shards(pattern, what)
    for i, shard in enumerate(shards):
        state.shard = i
        with access.open_input(shard, f"webdataset shard ({what})") as f:
            state.read(os.fstat(f.fileno()).st_size, f"shard {shard}")
            _read_shard(f, shard, size, state)
    return shards


def _labels(state: _Split, pattern: str, classes: tuple[str, ...] | None,
            ) -> tuple[np.ndarray, tuple[str, ...], np.ndarray | None]:
    check_not_empty(len(state.labels), f"webdataset {pattern} (no samples with an image and "
                                       "a .cls label)")
    has_group = [g is not None for g in state.groups]
    if any(has_group) and not all(has_group):
        raise InvalidInput(f"{state.where[has_group.index(False)]} has no .group member, "
                           "while other samples have one; give every sample a group or none")
    y = np.asarray(state.labels, np.int64)
    names = int_label_classes(y, None, pattern, classes)
    attr = np.asarray(state.groups) if all(has_group) else None
    return y, names, attr


def _read_shard(f: BinaryIO, shard: str, size: int, state: _Split) -> None:
    """Add the samples of one shard to ``state``, members in order."""
    key, fields, spans = None, {}, {}
    try:
        with tarfile.open(fileobj=_Clamped(f), mode="r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidInput(f"shard {shard}: member {member.name!r} is a link or "
                                       "special file; a shard holds regular files only")
                named = _NAME.match(member.name)
                if named is None:  # no extension: no field of any sample (as in WebDataset)
                    continue
                if named.group(1) != key:
                    _add_sample(key, fields, spans, shard, size, state)
                    key, fields, spans = named.group(1), {}, {}
                ext = named.group(2).lower()
                if ext in fields:
                    raise InvalidInput(f"shard {shard}: sample {key!r} has two .{ext} members")
                if ext in _IMAGE_EXTS or ext in _FIELD_BYTES:
                    fields[ext] = _member_bytes(tar, member, shard, ext, state)
                    spans[ext] = (state.shard, member.offset_data, member.size)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidInput(f"cannot read webdataset shard {shard}: {type(exc).__name__}: "
                           f"{exc}; give an uncompressed tar file") from None
    _add_sample(key, fields, spans, shard, size, state)


def _member_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, shard: str, ext: str,
                  state: _Split) -> bytes:
    """A member's content, its declared size checked before it is read."""
    cap = _FIELD_BYTES.get(ext)
    if cap is not None and member.size > cap:
        raise InvalidInput(f"shard {shard}: {member.name!r} is {member.size} bytes; a .{ext} "
                           f"field holds at most {cap}")
    if member.size > state.decoded_left:  # the encoded bytes are held while decoding
        state.decoded(member.size, f"shard {shard} member {member.name!r}")
    data = bytes(access.read_upto(tar.extractfile(member), member.size))  # in chunks: the
    # declared size may be far more than the shard holds
    if len(data) != member.size:
        raise InvalidInput(f"shard {shard} is truncated inside {member.name!r}")
    return data


def _add_sample(key: str | None, fields: dict[str, bytes],
                spans: dict[str, tuple[int, int, int]], shard: str, size: int,
                state: _Split) -> None:
    if key is None:
        return
    where = f"shard {shard} sample {key!r}"
    images = [ext for ext in _IMAGE_EXTS if ext in fields]
    if len(images) != 1 or "cls" not in fields:
        raise InvalidInput(f"{where} has {len(images)} images and "
                           f"{'a' if 'cls' in fields else 'no'} .cls label; every sample "
                           f"needs one .png/.jpg image and a .cls class id (it has "
                           f"{sorted(fields) or 'neither'})")
    state.labels.append(_label(fields["cls"], where))
    state.groups.append(_text(fields["group"], where, "group") if "group" in fields else None)
    state.where.append(where)
    if state.indexing:
        state.shapes.append(probe_image(io.BytesIO(fields[images[0]]), where,
                                        f"the image of {where}", size))
        state.spans.append(spans[images[0]])
        return
    state.images.append(decode_image(io.BytesIO(fields[images[0]]), where,
                                       f"the image of {where}", size))
    state.decoded(state.images[-1].nbytes, where)


def _label(data: bytes, where: str) -> int:
    text = _text(data, where, "cls")
    if not _INT.fullmatch(text):
        raise InvalidInput(f"{where}: .cls is {text!r}; give the class id as an integer")
    return int(text)


def _text(data: bytes, where: str, ext: str) -> str:
    try:
        text = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: .{ext} is not UTF-8 text") from None
    if not text:
        raise InvalidInput(f"{where}: .{ext} is empty")
    return text


def _stack(images: list[np.ndarray], where: list[str]) -> np.ndarray:
    """[H, W, C] images -> x [N, C, H, W]; one size for all, gray promoted to RGB if mixed."""
    first = images[0].shape[:2]
    for i, arr in enumerate(images):
        if arr.shape[:2] != first:
            raise InvalidInput(f"images have different sizes: {where[0]} is "
                               f"{first[1]}x{first[0]} but {where[i]} is {arr.shape[1]}x"
                               f"{arr.shape[0]}; set data.image_size to resize them all")
    if len({arr.shape[2] for arr in images}) > 1:
        images = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in images]
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


class _Clamped:
    """A file whose ``read(n)`` never asks for more than what is left of it: tarfile reads a
    header's declared size in one call, and that size comes from the untrusted shard."""

    def __init__(self, f: BinaryIO):
        self._f = f
        self._size = os.fstat(f.fileno()).st_size

    def read(self, n: int | None = -1) -> bytes:
        left = max(self._size - self._f.tell(), 0)
        return self._f.read(left if n is None or n < 0 else min(n, left))

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()
