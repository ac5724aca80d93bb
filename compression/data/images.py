"""Readers for image files: the ``imagefolder`` and ``manifest`` sources.

imagefolder: ``root/<class_name>/**/*.png|jpg|jpeg``; class names are the folder names, sorted.
manifest: a CSV with header ``path,label[,group]`` or a JSONL file of objects with those keys.
Relative image paths resolve against the manifest's directory. In the train manifest, when
every label is an integer the classes are "0".."max"; otherwise every label is a class name and
the classes are the distinct names, sorted. Other manifests may use a class name or a class index.

Images are read as grayscale (1 channel) when stored in a gray mode and as RGB otherwise (alpha
dropped); a split that mixes both is promoted to RGB. ``image_size`` > 0 resizes every image to
image_size x image_size (bilinear); without it all images of a split must share one size.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from compression.data.raw import RawSplit, check_not_empty
from compression.errors import InvalidInput

__all__ = ["IMAGE_SUFFIXES", "load_images", "read_imagefolder", "read_manifest"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image as [H, W, C] uint8 with C 1 (gray modes) or 3."""
    try:
        with Image.open(path) as img:
            img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
            if size:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"cannot read image {path}: {exc}") from exc
    return arr[:, :, None] if arr.ndim == 2 else arr


def load_images(paths: list[Path], size: int) -> np.ndarray:
    """Read ``paths`` into x: [N, C, H, W] uint8 (see the module docstring for modes/sizes)."""
    arrays = [_read_image(p, size) for p in paths]
    first = arrays[0].shape[:2]
    for path, arr in zip(paths, arrays):
        if arr.shape[:2] != first:
            raise InvalidInput(
                f"images have different sizes: {paths[0]} is {first[1]}x{first[0]} but {path} is "
                f"{arr.shape[1]}x{arr.shape[0]}; set data.image_size to resize them all")
    if len({arr.shape[2] for arr in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    return np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2))


def read_imagefolder(root: Path, size: int, classes: tuple[str, ...] | None) -> RawSplit:
    """A class-per-folder tree; ``classes`` (train's names) must match its folders exactly."""
    if not root.is_dir():
        raise InvalidInput(f"image folder {root} does not exist or is not a directory; "
                           "expected root/<class_name>/*.png")
    dirs = tuple(sorted(d.name for d in root.iterdir() if d.is_dir() and d.name[0] != "."))
    if not dirs:
        raise InvalidInput(f"image folder {root} has no class folders; "
                           "expected root/<class_name>/*.png")
    if classes is not None and dirs != classes:
        missing, extra = sorted(set(classes) - set(dirs)), sorted(set(dirs) - set(classes))
        raise InvalidInput(f"image folder {root} has other classes than the training set: "
                           f"missing {missing}, extra {extra}")
    paths: list[Path] = []
    labels: list[int] = []
    for c, name in enumerate(dirs):
        files = sorted(p for p in (root / name).rglob("*")
                       if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += files
        labels += [c] * len(files)
    check_not_empty(len(paths), f"image folder {root} (no .png/.jpg/.jpeg files)")
    return RawSplit(load_images(paths, size), np.asarray(labels, np.int64), None, dirs, str(root))


def read_manifest(path: Path, size: int, classes: tuple[str, ...] | None) -> RawSplit:
    """A CSV or JSONL manifest (see the module docstring)."""
    if not path.is_file():
        raise InvalidInput(f"manifest {path} does not exist; check data.path / data.test_path")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    check_not_empty(len(rows), f"manifest {path}")
    has_group = [r.get("group") is not None for _, r in rows]
    if any(has_group) and not all(has_group):
        line = rows[has_group.index(False)][0]
        raise InvalidInput(f"manifest {path} line {line}: no group, while other rows have one")
    labels = [(line, str(r["label"]).strip()) for line, r in rows]
    classes = classes if classes is not None else _manifest_classes([lb for _, lb in labels])
    y = _resolve_labels(labels, classes, path)
    image_paths = [_image_path(path, r["path"], line) for line, r in rows]
    attr = np.asarray([str(r["group"]) for _, r in rows]) if all(has_group) else None
    return RawSplit(load_images(image_paths, size), y, attr, classes, str(path))


def _csv_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            if "path" not in fields or "label" not in fields:
                raise InvalidInput(f"manifest {path}: header is {fields}; it must be "
                                   "path,label[,group]")
            return [(reader.line_num, _check_row(row, path, reader.line_num)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from exc


def _jsonl_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() not in (".jsonl", ".ndjson"):
        raise InvalidInput(f"manifest {path} must end in .csv or .jsonl")
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from exc
    for line, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"manifest {path} line {line} is not valid JSON: {exc}") from exc
        if not isinstance(row, dict):
            raise InvalidInput(f"manifest {path} line {line}: expected an object with path, label")
        rows.append((line, _check_row(row, path, line)))
    return rows


def _check_row(row: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    for key in ("path", "label"):
        value = row.get(key)
        if value is None or isinstance(value, bool) or str(value).strip() == "":
            raise InvalidInput(f"manifest {path} line {line}: {key} is missing or empty")
    if row.get("group") == "":
        raise InvalidInput(f"manifest {path} line {line}: group is empty")
    return row


def _is_int(label: str) -> bool:
    return label.lstrip("-").isdigit()


def _manifest_classes(labels: list[str]) -> tuple[str, ...]:
    if all(_is_int(lb) for lb in labels):
        return tuple(str(i) for i in range(max(max(int(lb) for lb in labels) + 1, 1)))
    return tuple(sorted(set(labels)))


def _resolve_labels(labels: list[tuple[int, str]], classes: tuple[str, ...],
                    path: Path) -> np.ndarray:
    """Class ids [N] for (line, label) pairs: a class name, else an index into ``classes``."""
    index = {name: i for i, name in enumerate(classes)}
    ids = []
    for line, label in labels:
        if label in index:
            ids.append(index[label])
        elif _is_int(label) and 0 <= int(label) < len(classes):
            ids.append(int(label))
        else:
            shown = list(classes) if len(classes) <= 20 else list(classes[:20]) + ["..."]
            raise InvalidInput(f"manifest {path} line {line}: label {label!r} is not a class "
                               f"name or index 0..{len(classes) - 1}; classes: {shown}")
    return np.asarray(ids, np.int64)


def _image_path(manifest: Path, value: Any, line: int) -> Path:
    image = Path(str(value).strip()).expanduser()
    image = image if image.is_absolute() else manifest.parent / image
    if not image.is_file():
        raise InvalidInput(f"image {image} (manifest {manifest} line {line}) does not exist")
    return image
