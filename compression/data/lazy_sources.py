"""``index_split``: a split of an image source as an index (``ImageIndex``), no pixels decoded.

The counterpart of ``sources.read_split`` for the streaming path: the same files in the same
order, the same labels, class names and attribute values, the same checks (every file is
opened through ``compression.access``; every image header is read and checked), but the
split's ``x`` is an ``ImageIndex`` that decodes a sample when a batch needs it. An image
folder or manifest at an object URI is indexed by ``remote_files``.
"""

from __future__ import annotations

from pathlib import Path

from compression import access
from compression.data.images import list_imagefolder, parse_manifest
from compression.data.index import ImageIndex
from compression.data.raw import RawSplit
from compression.data.remote_files import index_remote
from compression.data.webdataset import index_webdataset
from compression.errors import InvalidInput
from compression.spec import DataSpec

__all__ = ["STREAMABLE", "index_split", "index_imagefolder", "index_manifest"]

STREAMABLE = ("imagefolder", "manifest", "webdataset")
_FIELDS = {"train": "data.path", "test": "data.test_path", "holdout": "data.holdout_path"}


def index_split(spec: DataSpec, role: str, classes: tuple[str, ...] | None) -> RawSplit:
    """Split ``role`` (train, test or holdout) of a streamable source, its x an index."""
    path = {"train": spec.resolved_path, "test": spec.test_path,
            "holdout": spec.holdout_path}[role]
    if spec.source == "webdataset":
        return index_webdataset(path, spec.image_size, classes, _FIELDS[role])
    where = access.local_or_uri(path)
    if isinstance(where, str) and spec.source in ("imagefolder", "manifest"):
        return index_remote(spec.source, where, spec.image_size, classes, spec.workers)
    if spec.source == "imagefolder":
        return index_imagefolder(where, spec.image_size, classes, spec.workers)
    if spec.source == "manifest":
        return index_manifest(where, spec.image_size, classes, spec.workers)
    raise InvalidInput(f"data.source {spec.source!r} cannot stream; streaming reads "
                       f"{', '.join(STREAMABLE)}")


def index_imagefolder(root: Path, size: int, classes: tuple[str, ...] | None,
                      workers: int = 0) -> RawSplit:
    """A class-per-folder tree, listed as ``images.read_imagefolder`` lists it."""
    paths, labels, dirs = list_imagefolder(root, classes)
    return RawSplit(ImageIndex.of_files(paths, size, str(root), workers), labels, None, dirs,
                    str(root))


def index_manifest(path: Path, size: int, classes: tuple[str, ...] | None,
                   workers: int = 0) -> RawSplit:
    """A CSV or JSONL manifest, read as ``images.read_manifest`` reads it."""
    paths, y, attr, classes = parse_manifest(path, classes)
    return RawSplit(ImageIndex.of_files(paths, size, str(path), workers), y, attr, classes,
                    str(path))
