"""Readers for image files: the ``imagefolder`` and ``manifest`` sources.

imagefolder: ``root/<class_name>/**/*.png|jpg|jpeg``; class names are the folder names, sorted.
manifest: a CSV with header ``path,label[,group]`` or a JSONL file of objects with those keys.
Relative image paths resolve against the manifest's directory. In the train manifest, when
every label is an integer the classes are "0".."max"; otherwise every label is a class name and
the classes are the distinct names, sorted. Other manifests may use a class name or a class index.

Images must be PNG or JPEG files: other formats are refused before any decoder runs. They are
read as grayscale (1 channel) when stored in a gray mode and as RGB otherwise (alpha dropped); a
split that mixes both is promoted to RGB. ``image_size`` > 0 resizes every image to
image_size x image_size (bilinear); without it all images of a split must share one size.

Every file is opened through ``compression.access`` (checked against the job's roots when it is
opened), and image dimensions are checked against the job's memory limit before decoding.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from compression import access
from compression.data.raw import MAX_CLASSES, RawSplit, check_not_empty, require_exists
from compression.errors import InvalidInput

__all__ = ["IMAGE_SUFFIXES", "decode_image", "list_imagefolder", "load_images", "parse_manifest",
           "read_imagefolder", "read_manifest"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_FORMATS = ("PNG", "JPEG")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_PIXEL_BYTES = 4  # the widest mode PIL decodes into (RGBA, CMYK, I, F): a bound on its buffer
# What PIL raises on a malformed or truncated file: each means "not a valid image".
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error,
                  IndexError, TypeError, Image.DecompressionBombError)
_INT_LABEL = re.compile(r"-?[0-9]{1,18}")  # ASCII digits only: int() takes what isdigit() does not


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image as [H, W, C] uint8 with C 1 (gray modes) or 3."""
    with access.open_input(path, "image") as f:
        return decode_image(f, path, f"image {path}", size)


def decode_image(source: BinaryIO, where: Path | str, what: str, size: int) -> np.ndarray:
    """One PNG or JPEG from ``source`` as [H, W, C] uint8, C 1 (gray modes) or 3, resized to
    ``size`` when set; ``where`` and ``what`` name it in errors."""
    try:
        with Image.open(source, formats=_FORMATS) as img:
            _check_pixels(where, *img.size)  # before decoding: a small file can be huge
            img = img.convert("L" if img.mode in _GRAY_MODES else "RGB")
            if size:
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img)
    except _DECODE_ERRORS as exc:
        raise InvalidInput(f"cannot read {what}: {type(exc).__name__}: {exc}; give a valid "
                           "PNG or JPEG file") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def _check_pixels(path: Path | str, width: int, height: int) -> None:
    """Refuse an empty image, or one whose decoding alone would pass the memory limit."""
    if width == 0 or height == 0:
        raise InvalidInput(f"image {path} is {width}x{height} pixels; every image needs at "
                           "least one pixel")
    limit = access.decoded_limit()
    if width * height * _PIXEL_BYTES > limit:
        raise InvalidInput(f"image {path} is {width}x{height} pixels: decoding it would take "
                           f"more than the {limit} bytes a job may load; use smaller images or "
                           "ask the operator to raise max_data_bytes")


def load_images(paths: list[Path], size: int) -> np.ndarray:
    """Read ``paths`` into x: [N, C, H, W] uint8 (see the module docstring for modes/sizes)."""
    limit, total, arrays = access.decoded_limit(), 0, []
    for path in paths:
        arrays.append(_read_image(path, size))
        total += arrays[-1].nbytes
        if total > limit:
            raise InvalidInput(f"the {len(paths)} images from {paths[0]} on pass the "
                               f"{limit} bytes a job may load (at {path}); use fewer or smaller "
                               "images, set data.image_size, or ask the operator to raise "
                               "max_data_bytes")
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
    """A class-per-folder tree; ``classes`` (train's names) must match its folders exactly.

    Each folder's entries are resolved and checked against the job's roots when listed, and
    each image again when it is opened."""
    paths, labels, dirs = list_imagefolder(root, classes)
    return RawSplit(load_images([Path(p) for p in paths], size), labels, None, dirs, str(root))


def list_imagefolder(root: Path, classes: tuple[str, ...] | None
                     ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
    """The image files of a class-per-folder tree, their labels and the class names."""
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
        # Not only regular files: a FIFO named x.png is opened, and refused as what it is.
        files = [str(p) for p in access.walk_files(root / name, "image folder")
                 if p.suffix.lower() in IMAGE_SUFFIXES]
        paths += files
        labels += [c] * len(files)
    check_not_empty(len(paths), f"image folder {root} (no .png/.jpg/.jpeg files)")
    return paths, np.asarray(labels, np.int64), dirs


def read_manifest(path: Path, size: int, classes: tuple[str, ...] | None) -> RawSplit:
    """A CSV or JSONL manifest (see the module docstring)."""
    paths, y, attr, classes = parse_manifest(path, classes)
    return RawSplit(load_images([Path(p) for p in paths], size), y, attr, classes, str(path))


def parse_manifest(path: Path, classes: tuple[str, ...] | None
                   ) -> tuple[list[str], np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """A manifest's image paths, labels, attribute values (or None) and class names."""
    require_exists(path, "manifest", "check data.path / data.test_path")
    if path.suffix.lower() not in (".csv", ".jsonl", ".ndjson"):
        raise InvalidInput(f"manifest {path} must end in .csv or .jsonl")
    text = _manifest_text(path)
    rows = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    del text
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
    return image_paths, y, attr, classes


def _manifest_text(path: Path) -> str:
    try:
        return access.read_input(path, "manifest").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"cannot read manifest {path}: it is not UTF-8 text ({exc})") from None


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        fields = reader.fieldnames or []
        if "path" not in fields or "label" not in fields:
            raise InvalidInput(f"manifest {path}: header is {fields}; it must be "
                               "path,label[,group]")
        return [(reader.line_num, _check_row(row, path, reader.line_num)) for row in reader]
    except csv.Error as exc:
        raise InvalidInput(f"cannot read manifest {path}: {exc}") from exc


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for line, text in enumerate(text.splitlines(), start=1):
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except (ValueError, RecursionError) as exc:  # deep nesting, or an int too long to parse
            raise InvalidInput(f"manifest {path} line {line} is not valid JSON: "
                               f"{type(exc).__name__}: {exc}") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"manifest {path} line {line}: expected an object with path, label")
        rows.append((line, _check_row(row, path, line)))
    return rows


def _check_row(row: dict[str, Any], path: Path, line: int) -> dict[str, Any]:
    for key in ("path", "label"):
        value = row.get(key)
        if value is None or isinstance(value, bool) or str(value).strip() == "":
            raise InvalidInput(f"manifest {path} line {line}: {key} is missing or empty")
    for key, kinds in (("path", str), ("label", (str, int)), ("group", (str, int))):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise InvalidInput(f"manifest {path} line {line}: {key} is {value!r}; give a "
                               f"{'string' if kinds is str else 'string or an integer'}")
    if row.get("group") == "":
        raise InvalidInput(f"manifest {path} line {line}: group is empty")
    return row


def _is_int(label: str) -> bool:
    return _INT_LABEL.fullmatch(label) is not None


def _manifest_classes(labels: list[str], path: Path) -> tuple[str, ...]:
    if all(_is_int(lb) for lb in labels):
        top = max(int(lb) for lb in labels) + 1
        if top > MAX_CLASSES:
            raise InvalidInput(f"manifest {path}: label {top - 1} would make {top} classes, "
                               f"more than {MAX_CLASSES}; use class ids 0..C-1 or class names")
        return tuple(str(i) for i in range(max(top, 1)))
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
    """The image a row names, checked against the roots now; it is checked again when opened."""
    text = str(value).strip()
    if "\0" in text:
        raise InvalidInput(f"manifest {manifest} line {line}: path contains a NUL character")
    image = Path(text).expanduser()
    image = image if image.is_absolute() else manifest.parent / image
    access.checked_path(image, f"image (manifest {manifest} line {line})")
    if not os.path.exists(image):  # a FIFO exists: opening it says what it is
        raise InvalidInput(f"image {image} (manifest {manifest} line {line}) does not exist")
    return image
