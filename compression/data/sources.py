"""The ``fashion-mnist`` source (idx files), and ``read_split``, which picks a source's reader.

The npz reader lives in ``compression.data.npz``, the image readers in
``compression.data.images``, the WebDataset reader in ``compression.data.webdataset``. Every
file is opened through ``compression.access``; the sources in ``URI_SOURCES`` may read
objects (``s3://``, ``gs://``, ``https://``; image folders and manifests through
``compression.data.remote_files``), Fashion-MNIST a local folder only.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from compression import access
from compression.data.images import read_imagefolder, read_manifest
from compression.data.npz import read_npz
from compression.data.raw import RawSplit, check_declared, check_labels, check_not_empty
from compression.data.remote_files import read_remote
from compression.data.webdataset import read_webdataset
from compression.errors import InvalidInput
from compression.spec import DataSpec

__all__ = ["FASHION_MNIST_CLASSES", "URI_SOURCES", "read_split", "read_npz",
           "read_fashion_mnist", "read_idx"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
URI_SOURCES = ("npz", "webdataset", "imagefolder", "manifest")  # paths may be URIs
_FIELDS = {"train": "data.path", "test": "data.test_path", "holdout": "data.holdout_path"}
_INSTALL_HINT = ("install the Debian package dataset-fashion-mnist "
                 "(sudo apt-get install dataset-fashion-mnist) or point data.path at a directory "
                 "holding the four Fashion-MNIST idx files")


def read_split(spec: DataSpec, role: str, classes: tuple[str, ...] | None) -> RawSplit:
    """Read split ``role`` (train, test or holdout) of ``spec``'s source.

    ``classes`` is None for train; for the other splits it is the train class names, which
    their labels must agree with.
    """
    path = {"train": spec.resolved_path, "test": spec.test_path,
            "holdout": spec.holdout_path}[role]
    if spec.source == "fashion-mnist":
        if role == "holdout":
            raise InvalidInput(f"data.holdout_path ({path}) is not used with source fashion-mnist; "
                               "the holdout is carved from the train files (data.holdout_fraction)")
        # test_path is ignored: the test split is always the t10k files beside the train files
        return read_fashion_mnist(_local(spec.resolved_path, spec.source, "data.path"), role)
    if spec.source == "npz":
        return read_npz(access.local_or_uri(path), classes)
    if spec.source == "webdataset":
        return read_webdataset(path, spec.image_size, classes, _FIELDS[role])
    if spec.source in ("imagefolder", "manifest"):
        where = access.local_or_uri(path)
        if isinstance(where, str):  # an object store's folder or manifest
            return read_remote(spec.source, where, spec.image_size, classes)
        reader = read_imagefolder if spec.source == "imagefolder" else read_manifest
        return reader(where, spec.image_size, classes)
    raise InvalidInput(f"data.source {spec.source!r} is not one of fashion-mnist, npz, "
                       "imagefolder, manifest, webdataset")


def _local(path: str, source: str, field: str) -> Path:
    """``path`` as a local folder or file: these sources resolve files relative to it."""
    where = access.local_or_uri(path)
    if isinstance(where, str):
        raise InvalidInput(f"{field} {where!r}: source {source} reads local paths only; copy "
                           f"the data to the server, or store it for a source that reads "
                           f"objects ({', '.join(URI_SOURCES)})")
    return where


def read_fashion_mnist(root: Path, role: str) -> RawSplit:
    """The train (60k) or test (t10k) idx pair under ``root``, gzipped or not: x [N, 1, 28, 28]."""
    access.checked_path(root, "Fashion-MNIST directory")
    if not root.is_dir():
        raise InvalidInput(f"Fashion-MNIST directory {root} does not exist; {_INSTALL_HINT}")
    images, labels = (read_idx(_find_idx(root, stem)) for stem in _IDX_FILES[role])
    origin = str(_find_idx(root, _IDX_FILES[role][0]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InvalidInput(f"{origin}: images {images.shape} and labels {labels.shape} do not "
                           f"form one split; {_INSTALL_HINT}")
    check_not_empty(len(labels), origin)
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise InvalidInput(f"{origin}: images are {images.shape[2]}x{images.shape[1]} pixels; "
                           f"every image needs at least one pixel; {_INSTALL_HINT}")
    y = labels.astype(np.int64)
    check_labels(y, len(FASHION_MNIST_CLASSES), origin)
    return RawSplit(images[:, None], y, None, FASHION_MNIST_CLASSES, origin)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        # exists, not is_file: a FIFO or folder by that name is reported as what it is
        if os.path.lexists(root / name):
            return root / name
    raise InvalidInput(f"{root / (stem + '.gz')} is missing; {_INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian dims).

    The dims are checked against the job's memory limit before the data is read, and at most
    the declared bytes are decompressed: a gzip bomb or a lying header stops there.
    """
    with access.open_input(path, "idx file") as raw:
        try:
            stream = gzip.GzipFile(fileobj=raw) if path.suffix == ".gz" else raw
            magic = stream.read(4)
            if len(magic) < 4 or magic[:3] != b"\x00\x00\x08":
                raise InvalidInput(f"{path} is not an idx file of unsigned bytes (magic number "
                                   f"{magic.hex() or 'missing'}); {_INSTALL_HINT}")
            packed = stream.read(4 * magic[3])
            if len(packed) < 4 * magic[3]:
                raise InvalidInput(f"{path} is truncated inside its header; {_INSTALL_HINT}")
            dims = struct.unpack(f">{magic[3]}I", packed)
            size = math.prod(dims)
            check_declared(size, str(path), f"dims {dims}")
            data = access.read_upto(stream, size + 1)  # +1: trailing bytes show
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidInput(f"cannot read idx file {path}: {exc}; {_INSTALL_HINT}") from exc
    if len(data) != size:
        raise InvalidInput(f"{path} is truncated or has trailing bytes (dims {dims}, "
                           f"{len(data)} data bytes); {_INSTALL_HINT}")
    # a bytearray: the array viewing it is writable, as the tensors built on it must be
    return np.frombuffer(data, np.uint8).reshape(dims)
