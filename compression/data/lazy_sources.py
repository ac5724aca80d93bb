"""``index_split``: a split of an image source as an index (``ImageIndex``), no pixels decoded.

The counterpart of ``sources.read_split`` for the streaming path: the same files in the same
order, the same labels, class names and attribute values, the same checks (every file is
opened through ``compression.access``; every image header is read and checked), but the
split's ``x`` is an ``ImageIndex`` that decodes a sample when a batch needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression import access
from compression.data.images import (IMAGE_SUFFIXES, _csv_rows, _image_path, _jsonl_rows,
                                     _manifest_classes, _manifest_text, _resolve_labels)
from compression.data.index import ImageIndex
from compression.data.raw import RawSplit, check_not_empty, require_exists
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
    if isinstance(where, str):
        raise InvalidInput(f"{_FIELDS[role]} {where!r}: source {spec.source} reads local paths "
                           "only; copy the data to the server, or store it as webdataset shards")
    if spec.source == "imagefolder":
        return index_imagefolder(where, spec.image_size, classes, spec.workers)
    if spec.source == "manifest":
        return index_manifest(where, spec.image_size, classes, spec.workers)
    raise InvalidInput(f"data.source {spec.source!r} cannot stream; streaming reads "
                       f"{', '.join(STREAMABLE)}")


def index_imagefolder(root: Path, size: int, classes: tuple[str, ...] | None,
                      workers: int = 0) -> RawSplit:
    """A class-per-folder tree, listed as ``images.read_imagefolder`` lists it."""
    access.checked_path(root, "image folder")
    if not root.is_dir():
        raise InvalidInput(f"image folder {root} does not exist or is not a directory; "
                           "expected root/<class_name>/*.png")
    dirs = tuple(name for name, real in access.list_dir(root, "image folder")
                 if real.is_dir() and name[0] != ".")
    if not dirs:
        raise InvalidInput(f"image folder {root} has no class folders; "
                           "expected root/<class_name>/*.png")
    if classes is not None and dirs != classes:
        missing, extra = sorted(set(classes) - set(dirs)), sorted(set(dirs) - set(classes))
        raise InvalidInput(f"image folder {root} has other classes than the training set: "
                           f"missing {missing}, extra {extra}")
    paths: list[str] = []  # strings, not Paths: a Path per image costs several times more
    labels: list[int] = []
    for c, name in enumerate(dirs):
        files = [str(p) for p in access.walk_files(root / name, "image folder")
                 if p.suffix.lower() in IMAGE_SUFFIXES]
        paths += files
        labels += [c] * len(files)
    check_not_empty(len(paths), f"image folder {root} (no .png/.jpg/.jpeg files)")
    index = ImageIndex.of_files(paths, size, str(root), workers)
    return RawSplit(index, np.asarray(labels, np.int64), None, dirs, str(root))


def index_manifest(path: Path, size: int, classes: tuple[str, ...] | None,
                   workers: int = 0) -> RawSplit:
    """A CSV or JSONL manifest, read as ``images.read_manifest`` reads it."""
    require_exists(path, "manifest", "check data.path / data.test_path")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise InvalidInput(f"manifest {path} must end in .csv or .jsonl")
    text = _manifest_text(path)
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    check_not_empty(len(rows), f"manifest {path}")
    has_group = [r.get("group") is not None for _, r in rows]
    if any(has_group) and not all(has_group):
        line = rows[has_group.index(False)][0]
        raise InvalidInput(f"manifest {path} line {line}: no group, while other rows have one")
    labels = [(line, str(r["label"]).strip()) for line, r in rows]
    classes = classes if classes is not None else _manifest_classes([lb for _, lb in labels],
                                                                    path)
    y = _resolve_labels(labels, classes, path)
    image_paths = [str(_image_path(path, r["path"], line)) for line, r in rows]
    attr = np.asarray([str(r["group"]) for _, r in rows]) if all(has_group) else None
    del rows, labels  # the parsed rows are the largest thing here; not held while probing
    index = ImageIndex.of_files(image_paths, size, str(path), workers)
    return RawSplit(index, y, attr, classes, str(path))
