"""An index of image samples: where each one lives and the shape it decodes to, no pixels.

The streaming path samples, carves and labels groups on this index exactly as the in-memory
path does on decoded arrays; pixels are read only when a batch needs them. A sample lives in
an image file (imagefolder, manifest) or at a byte range of a WebDataset shard.

Names are packed into one byte array with offsets rather than a list of Python strings: the
DataLoader's forked workers then share the pages instead of copying them as reference counts
change (a list of 200k strings would be copied into every worker).
"""

from __future__ import annotations

import io
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from compression import access
from compression.data.images import (_DECODE_ERRORS, _FORMATS, _GRAY_MODES, _check_pixels,
                                     decode_image)
from compression.data.raw import to_channels
from compression.errors import InvalidInput

__all__ = ["PackedNames", "NamePacker", "ImageIndex", "image_shape", "probe_image"]


@dataclass(frozen=True)
class PackedNames:
    """Strings as one UTF-8 byte array: blob [total bytes] uint8, ends [M] int64. Any
    Python string round-trips, lone surrogates (undecodable file names) included."""

    blob: np.ndarray
    ends: np.ndarray

    @classmethod
    def of(cls, names: Iterable[str]) -> PackedNames:
        if isinstance(names, PackedNames):
            return names
        packer = NamePacker()
        for name in names:
            packer.append(name)
        return packer.packed()

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> str:
        lo = int(self.ends[i - 1]) if i else 0
        return self.blob[lo:int(self.ends[i])].tobytes().decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes + self.ends.nbytes


class NamePacker:
    """Builds a ``PackedNames`` one string at a time: a growing byte buffer and an array of
    ends, never a Python object per string (a data set of millions of files indexes in a few
    bytes per file more than its names' lengths)."""

    def __init__(self) -> None:
        self._blob = bytearray()
        self._ends = array("q")

    def append(self, name: str) -> None:
        self._blob += name.encode("utf-8", "surrogatepass")
        self._ends.append(len(self._blob))

    def __len__(self) -> int:
        return len(self._ends)

    def packed(self) -> PackedNames:
        """The strings so far, copied out once into arrays of their exact size; the packer
        is emptied."""
        blob = np.frombuffer(self._blob, np.uint8).copy() if self._blob else np.zeros(0, np.uint8)
        ends = (np.frombuffer(self._ends, np.int64).copy() if self._ends
                else np.zeros(0, np.int64))
        self._blob, self._ends = bytearray(), array("q")
        return PackedNames(blob, ends)


@dataclass(frozen=True)
class ImageIndex:
    """Where each of N samples' image lives, and the [C, H, W] uint8 it decodes to.

    files: image files, or WebDataset shards (``offset`` >= 0 then).
    file_of: [N] int64, the entry of ``files`` each sample reads.
    offset, length: [N] int64 byte range of the image inside its shard; -1: the whole file.
    sample_shape: (C, H, W) of every decoded sample (channels after ``data.channels``).
    resize: ``data.image_size`` (0 keeps the stored size). origin: for error messages.
    """

    files: PackedNames
    file_of: np.ndarray
    offset: np.ndarray
    length: np.ndarray
    sample_shape: tuple[int, int, int]
    resize: int
    origin: str

    @classmethod
    def of_files(cls, paths: PackedNames | Iterable[Path | str], resize: int, origin: str,
                 workers: int = 0) -> ImageIndex:
        """An index of whole image files; each header is read (not decoded) to learn the
        split's shape and to refuse a bad file now rather than mid-training."""
        names = paths if isinstance(paths, PackedNames) else PackedNames.of(map(str, paths))
        shape = image_shape(_probe_files(names, resize, workers), names)
        n = len(names)
        return cls(names, np.arange(n, dtype=np.int64),
                   np.full(n, -1, np.int64), np.full(n, -1, np.int64), shape, resize, origin)

    def __len__(self) -> int:
        return len(self.file_of)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, H, W), as the decoded array's."""
        return (len(self), *self.sample_shape)

    @property
    def nbytes(self) -> int:
        """Bytes the decoded split takes in memory."""
        return len(self) * int(np.prod(self.sample_shape))

    def take(self, idx: np.ndarray) -> ImageIndex:
        """The samples at ``idx`` ([K] int), in that order."""
        return replace(self, file_of=self.file_of[idx], offset=self.offset[idx],
                       length=self.length[idx])

    def with_channels(self, channels: int) -> ImageIndex:
        """Decode to ``channels`` (1 or 3; 0 keeps them), as ``to_channels`` converts."""
        if channels in (0, self.sample_shape[0]):
            return self
        if {channels, self.sample_shape[0]} != {1, 3}:
            raise InvalidInput(f"{self.origin}: images have {self.sample_shape[0]} channels; "
                               "data.channels can convert only between 1 and 3")
        return replace(self, sample_shape=(channels, *self.sample_shape[1:]))

    def where(self, i: int) -> str:
        name = self.files[int(self.file_of[i])]
        return name if self.offset[i] < 0 else f"shard {name} at byte {int(self.offset[i])}"

    def decode(self, i: int, shards: dict[int, object] | None = None) -> np.ndarray:
        """Sample ``i`` as [C, H, W] uint8. ``shards``: open shard files by id, kept by the
        caller between calls (a worker reads many samples of one shard)."""
        name = self.files[int(self.file_of[i])]
        if self.offset[i] < 0:
            with access.open_input(name, "image") as f:
                arr = decode_image(f, name, f"image {name}", self.resize)
        else:
            arr = self._decode_member(i, name, shards if shards is not None else {})
        return self._conformed(arr, i)

    def _decode_member(self, i: int, shard: str, shards: dict[int, object]) -> np.ndarray:
        key = int(self.file_of[i])
        f = shards.get(key)
        if f is None:
            f = shards[key] = access.open_input(shard, "webdataset shard")
            if len(shards) > _OPEN_SHARDS:  # oldest first: dicts keep insertion order
                shards.pop(next(iter(shards))).close()  # type: ignore[attr-defined]
        f.seek(int(self.offset[i]))  # type: ignore[attr-defined]
        data = access.read_upto(f, int(self.length[i]))  # type: ignore[arg-type]
        if len(data) != self.length[i]:
            raise InvalidInput(f"{self.where(i)}: the shard is shorter than when it was "
                               "indexed; it changed while the job ran")
        return decode_image(io.BytesIO(bytes(data)), shard, f"the image in {self.where(i)}",
                            self.resize)

    def _conformed(self, arr: np.ndarray, i: int) -> np.ndarray:
        """[H, W, c] as read -> [C, H, W] of the split's shape."""
        c, h, w = self.sample_shape
        if arr.shape[:2] != (h, w):
            raise InvalidInput(f"{self.where(i)} is {arr.shape[1]}x{arr.shape[0]} pixels but "
                               f"the split's images are {w}x{h}; it changed after it was "
                               "indexed, or set data.image_size to resize them all")
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1))
        return chw if chw.shape[0] == c else to_channels(chw[None], c, self.origin)[0]


_OPEN_SHARDS = 4  # per process: random access touches few shards at a time per batch


def _probe_file(path: Path | str, resize: int) -> tuple[int, int, int]:
    with access.open_input(path, "image") as f:
        return probe_image(f, path, f"image {path}", resize)


def probe_image(source: BinaryIO, where: Path | str, what: str, size: int) -> tuple[int, int, int]:
    """(H, W, C) that ``decode_image`` would give for ``source``, from its header alone, with
    the decoder's own checks (format, pixel count against the memory limit)."""
    try:
        with Image.open(source, formats=_FORMATS) as img:
            _check_pixels(where, *img.size)
            width, height = (size, size) if size else img.size
            return height, width, 1 if img.mode in _GRAY_MODES else 3
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot read {what}: {type(exc).__name__}: {exc}; give a valid "
                           "PNG or JPEG file") from None


_PROBE_CHUNK = 512  # files per task: a few hundred tasks for a large split, not one per file


def _probe_files(names: PackedNames, resize: int, workers: int) -> np.ndarray:
    """(H, W, C) of every file's header, [N, 3] int64. On a bad file, the error of the first
    bad one in order, as a sequential pass would raise it."""
    shapes = np.zeros((len(names), 3), np.int64)

    def probe(lo: int) -> None:
        for i in range(lo, min(lo + _PROBE_CHUNK, len(names))):
            shapes[i] = _probe_file(names[i], resize)

    starts = range(0, len(names), _PROBE_CHUNK)
    if workers < 2:
        for lo in starts:
            probe(lo)
        return shapes
    # Opening and parsing a header is mostly waiting on the file system: threads overlap it.
    # A task per chunk keeps the futures few; their results are taken in order, so the first
    # error raised is the first bad file's.
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(probe, starts))  # each task fills ``shapes``; this re-raises its error
    return shapes


def image_shape(shapes: Sequence[tuple[int, int, int]] | np.ndarray,
                where: Sequence[str] | PackedNames) -> tuple[int, int, int]:
    """(C, H, W) of a split whose images are ``shapes`` ((H, W, C) each, as decoded): one
    size for all, gray promoted to RGB when the split mixes both (as ``load_images``)."""
    hwc = np.asarray(shapes, np.int64).reshape(-1, 3)
    first = (int(hwc[0, 0]), int(hwc[0, 1]))
    other = np.flatnonzero((hwc[:, :2] != hwc[0, :2]).any(axis=1))
    if len(other):
        i = int(other[0])
        h, w = int(hwc[i, 0]), int(hwc[i, 1])
        raise InvalidInput(
            f"images have different sizes: {where[0]} is {first[1]}x{first[0]} but "
            f"{where[i]} is {w}x{h}; set data.image_size to resize them all")
    return int(hwc[:, 2].max()), first[0], first[1]
