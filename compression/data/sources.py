"""Readers for the ``fashion-mnist`` and ``npz`` sources, and ``read_split``, which picks one.

npz layout: ``x`` uint8 (0-255) or float (0-1) images, ``y`` integer labels, optional ``group``
(attribute values, ints or strings) and optional ``class_names`` (strings). ``x`` may be
[N, H, W], [N, H, W, C] or [N, C, H, W]: a 4-d array whose last axis is 1 or 3 is read as NHWC,
any other 4-d array as NCHW (so [N, 3, 32, 3] is NHWC; store such odd shapes as NCHW with a
last axis other than 1 or 3, or as [N, H, W]).
"""

from __future__ import annotations

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from compression.data.images import read_imagefolder, read_manifest
from compression.data.raw import RawSplit, check_labels, check_not_empty, int_label_classes
from compression.errors import InvalidInput
from compression.spec import DataSpec

__all__ = ["FASHION_MNIST_CLASSES", "read_split", "read_npz", "read_fashion_mnist", "read_idx"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
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
        return read_fashion_mnist(Path(spec.resolved_path).expanduser(), role)
    if spec.source == "npz":
        return read_npz(Path(path).expanduser(), classes)
    if spec.source == "imagefolder":
        return read_imagefolder(Path(path).expanduser(), spec.image_size, classes)
    if spec.source == "manifest":
        return read_manifest(Path(path).expanduser(), spec.image_size, classes)
    raise InvalidInput(f"data.source {spec.source!r} is not one of fashion-mnist, npz, "
                       "imagefolder, manifest")


def read_fashion_mnist(root: Path, role: str) -> RawSplit:
    """The train (60k) or test (t10k) idx pair under ``root``, gzipped or not: x [N, 1, 28, 28]."""
    if not root.is_dir():
        raise InvalidInput(f"Fashion-MNIST directory {root} does not exist; {_INSTALL_HINT}")
    images, labels = (read_idx(_find_idx(root, stem)) for stem in _IDX_FILES[role])
    origin = str(_find_idx(root, _IDX_FILES[role][0]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InvalidInput(f"{origin}: images {images.shape} and labels {labels.shape} do not "
                           f"form one split; {_INSTALL_HINT}")
    check_not_empty(len(labels), origin)
    y = labels.astype(np.int64)
    check_labels(y, len(FASHION_MNIST_CLASSES), origin)
    return RawSplit(images[:, None], y, None, FASHION_MNIST_CLASSES, origin)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise InvalidInput(f"{root / (stem + '.gz')} is missing; {_INSTALL_HINT}")


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file of unsigned bytes (magic 0x0000 08 <ndim>, big-endian dims)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(f"cannot read idx file {path}: {exc}; {_INSTALL_HINT}") from exc
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise InvalidInput(f"{path} is not an idx file of unsigned bytes (magic number "
                           f"{data[:4].hex() or 'missing'}); {_INSTALL_HINT}")
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise InvalidInput(f"{path} is truncated inside its header; {_INSTALL_HINT}")
    dims = tuple(int(d) for d in np.frombuffer(data[4:header], ">u4"))
    if len(data) != header + int(np.prod(dims)):
        raise InvalidInput(f"{path} is truncated or has trailing bytes (dims {dims}, "
                           f"{len(data)} bytes); {_INSTALL_HINT}")
    # frombuffer views immutable bytes; copy so the tensors built on it are writable.
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def read_npz(path: Path, classes: tuple[str, ...] | None) -> RawSplit:
    """An .npz with x, y and optional group / class_names (see the module docstring)."""
    arrays = _load_npz(path)
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
    names = int_label_classes(y.astype(np.int64), None if declared is None else
                              tuple(declared.tolist()), str(path), classes)
    return RawSplit(x, y.astype(np.int64), attr, names, str(path))


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InvalidInput(f"npz file {path} does not exist; check data.path / data.test_path")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except ValueError as exc:
        raise InvalidInput(f"cannot read {path}: {exc}; store strings as a unicode array "
                           "(np.array(values, dtype=str)), not as Python objects") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidInput(f"cannot read {path} as .npz: {exc}") from exc


def _npz_images(x: np.ndarray, path: Path) -> np.ndarray:
    """x as stored -> [N, C, H, W] uint8 (see the module docstring for the layouts)."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise InvalidInput(f"{path}: x has shape {x.shape}; expected [N,H,W], [N,H,W,C] or "
                           "[N,C,H,W] with C 1 or 3")
    if np.issubdtype(x.dtype, np.floating):
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise InvalidInput(f"{path}: float x must lie in [0, 1]; store uint8 0-255 instead")
        x = np.rint(x * 255)
    elif not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
        raise InvalidInput(f"{path}: x has dtype {x.dtype}; store uint8 (0-255) or float (0-1)")
    return np.ascontiguousarray(x, dtype=np.uint8)


def _npz_strings(arrays: dict[str, np.ndarray], key: str, path: Path,
                 n: int | None) -> np.ndarray | None:
    """Optional 1-d array ``key`` as str values: [n] (or any length when n is None)."""
    if key not in arrays:
        return None
    values = arrays[key]
    if values.ndim != 1 or (n is not None and len(values) != n):
        raise InvalidInput(f"{path}: {key} has shape {values.shape}; expected [{n or 'C'}]")
    if values.dtype.kind == "S":
        return np.char.decode(values, "utf-8")
    if values.dtype.kind not in "iuU":
        raise InvalidInput(f"{path}: {key} has dtype {values.dtype}; use ints or strings")
    return values.astype(str)
