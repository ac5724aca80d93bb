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
import json
import os
import re
import struct
import zlib
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

import numpy as np
from PIL import Image

from compression import access
from compression.data.raw import MAX_CLASSES, RawSplit, check_not_empty, require_exists
from compression.errors import InvalidInput

if TYPE_CHECKING:
    from compression.data.index import NamePacker, PackedNames

__all__ = ["IMAGE_SUFFIXES", "MANIFEST_SUFFIXES", "check_class_folders", "decode_image",
           "list_imagefolder", "load_images", "manifest_text", "parse_manifest",
           "parse_manifest_rows", "read_imagefolder", "read_manifest"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".ndjson")
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


def check_class_folders(root: object, dirs: tuple[str, ...],
                        classes: tuple[str, ...] | None) -> None:
    """An evaluation split's class folders must be the training set's, exactly."""
    if classes is not None and dirs != classes:
        missing, extra = sorted(set(classes) - set(dirs)), sorted(set(dirs) - set(classes))
        raise InvalidInput(f"image folder {root} has other classes than the training set: "
                           f"missing {missing}, extra {extra}")


def list_imagefolder(root: Path, classes: tuple[str, ...] | None
                     ) -> tuple[PackedNames, np.ndarray, tuple[str, ...]]:
    """The image files of a class-per-folder tree, their labels and the class names."""
    from compression.data.index import NamePacker  # index imports this module

    access.checked_path(root, "image folder")
    if not root.is_dir():
        raise InvalidInput(f"image folder {root} does not exist or is not a directory; "
                           "expected root/<class_name>/*.png")
    dirs = tuple(name for name, real in access.list_dir(root, "image folder")
                 if real.is_dir() and name[0] != ".")
    if not dirs:
        raise InvalidInput(f"image folder {root} has no class folders; "
                           "expected root/<class_name>/*.png")
    check_class_folders(root, dirs, classes)
    paths = NamePacker()  # one byte buffer, not a Path or a string per image
    counts = []
    for name in dirs:
        before = len(paths)
        _list_images(root / name, paths)
        counts.append(len(paths) - before)
    check_not_empty(len(paths), f"image folder {root} (no .png/.jpg/.jpeg files)")
    return paths.packed(), np.repeat(np.arange(len(dirs), dtype=np.int64), counts), dirs


def _list_images(top: Path, out: NamePacker) -> None:
    """Append the image files below ``top`` to ``out``, in the order ``access.walk_files``
    sorts them (by path components), and with its checks, one folder listed at a time.

    Not only regular files: a FIFO named x.png is listed, and refused when it is opened. As
    ``walk_files`` (and ``Path.rglob``), a symlinked folder is not descended into."""
    stack = [(os.fspath(top), iter(_entries(os.fspath(top))))]
    while stack:
        folder, entries = stack[-1]
        for shown, descend, keep in entries:
            if descend:
                stack.append((shown, iter(_entries(shown))))
                break
            if keep:
                out.append(shown)
        else:
            stack.pop()


def _entries(folder: str) -> list[tuple[str, bool, bool]]:
    """(path as listed, whether to descend, whether it is an image file) per entry of
    ``folder``, sorted by name, each entry checked against the roots by ``list_dir``."""
    listed = access.list_dir(folder, "image folder")
    real_folder = os.path.realpath(os.path.expanduser(folder))  # as list_dir resolves it
    out = []
    for name, real in listed:
        real = os.fspath(real)
        # list_dir resolves only symlinks: an entry whose real path is not its own is one.
        link = real != os.path.join(real_folder, name)
        is_dir = os.path.isdir(real)
        keep = not is_dir and _suffix(name).lower() in IMAGE_SUFFIXES
        out.append((os.path.join(folder, name), is_dir and not link, keep))
    return out


def _suffix(name: str) -> str:
    """``PurePath(name).suffix``, without making a path."""
    i = name.rfind(".")
    return name[i:] if 0 < i < len(name) - 1 else ""


def read_manifest(path: Path, size: int, classes: tuple[str, ...] | None) -> RawSplit:
    """A CSV or JSONL manifest (see the module docstring)."""
    paths, y, attr, classes = parse_manifest(path, classes)
    return RawSplit(load_images([Path(p) for p in paths], size), y, attr, classes, str(path))


def parse_manifest(path: Path, classes: tuple[str, ...] | None
                   ) -> tuple[PackedNames, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """A manifest's image paths, labels, attribute values (or None) and class names."""
    require_exists(path, "manifest", "check data.path / data.test_path")
    if path.suffix.lower() not in MANIFEST_SUFFIXES:
        raise InvalidInput(f"manifest {path} must end in .csv or .jsonl")
    return parse_manifest_rows(manifest_text(path), path, path.suffix.lower() == ".csv",
                               classes, lambda value, line: str(_image_path(path, value, line)))


def parse_manifest_rows(text: str, where: Path | str, is_csv: bool,
                        classes: tuple[str, ...] | None, resolve: Callable[[str, int], str]
                        ) -> tuple[PackedNames, np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """The rows of a manifest's ``text`` (CSV when ``is_csv``, else JSONL): the file each
    row names, its label, its attribute value (or None) and the class names.

    ``where`` names the manifest in messages. ``resolve(path, line)`` maps a row's path, as
    written on its (1-based) line, to the name stored for it, refusing one it cannot take;
    it is called once a row, in order, after every other check has passed.

    Rows are read one at a time into packed arrays (the paths' bytes, a code per row for its
    label and its group) rather than kept as parsed rows: the memory it takes grows by a few
    bytes per row beyond the paths themselves. The checks and their order are those of
    reading every row first: the rows' own, then the groups, the labels, and the paths."""
    from compression.data.index import NamePacker  # index imports this module

    rows = _Rows()
    if is_csv:
        _csv_rows(where, text, rows)
    else:
        _jsonl_rows(where, text, rows)
    del text  # a caller that passed it without keeping it frees it here
    n = len(rows.lines)
    check_not_empty(n, f"manifest {where}")
    if rows.without_group and rows.without_group < n:
        first = rows.lines[rows.group_code.index(-1)]
        raise InvalidInput(f"manifest {where} line {first}: no group, while other rows have one")
    labels = list(rows.labels)  # the distinct labels, in the order first seen
    classes = classes if classes is not None else _manifest_classes(labels, where)
    ids = _resolve_labels(list(zip(rows.label_line, labels)), classes, where)
    y = ids[np.frombuffer(rows.label_code, np.int32)]
    listed, names = rows.packer.packed(), NamePacker()
    for i in range(n):
        names.append(resolve(listed[i], rows.lines[i]))
    del listed
    attr = None
    if not rows.without_group:
        attr = np.asarray(list(rows.groups))[np.frombuffer(rows.group_code, np.int32)]
    return names.packed(), y, attr, classes


class _Rows:
    """A manifest's rows as they are read: the paths' text packed, a code per row for its
    label and group (an index into the distinct values, -1 for no group), its line number."""

    def __init__(self) -> None:
        from compression.data.index import NamePacker  # index imports this module

        self.packer = NamePacker()
        self.lines = array("q")
        self.labels: dict[str, int] = {}  # distinct label -> its code
        self.label_line = array("q")  # per distinct label: the first line that has it
        self.label_code = array("i")
        self.groups: dict[str, int] = {}
        self.group_code = array("i")
        self.without_group = 0

    def add(self, row: dict[str, Any], line: int) -> None:
        self.packer.append(row["path"])
        self.lines.append(line)
        label = str(row["label"]).strip()
        code = self.labels.setdefault(label, len(self.labels))
        if code == len(self.label_line):
            self.label_line.append(line)
        self.label_code.append(code)
        group = row.get("group")
        if group is None:
            self.without_group += 1
            self.group_code.append(-1)
        else:
            group = str(group)
            self.group_code.append(self.groups.setdefault(group, len(self.groups)))


def manifest_text(path: Path | str) -> str:
    """A manifest's text (a local path or an object URI), through ``access``: UTF-8 only."""
    try:
        return access.read_input(path, "manifest").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"cannot read manifest {path}: it is not UTF-8 text ({exc})") from None


def _csv_rows(where: Path | str, text: str, rows: _Rows) -> None:
    try:
        reader = csv.DictReader(_lines(text, _CSV_LINE_BREAKS, keep_ends=True))
        fields = reader.fieldnames or []
        if "path" not in fields or "label" not in fields:
            raise InvalidInput(f"manifest {where}: header is {fields}; it must be "
                               "path,label[,group]")
        for row in reader:
            rows.add(_check_row(row, where, reader.line_num), reader.line_num)
    except csv.Error as exc:
        raise InvalidInput(f"cannot read manifest {where}: {exc}") from exc


def _jsonl_rows(where: Path | str, text: str, rows: _Rows) -> None:
    for line, body in enumerate(_lines(text, _LINE_BREAKS), start=1):
        if not body.strip():
            continue
        try:
            row = json.loads(body)
        except (ValueError, RecursionError) as exc:  # deep nesting, or an int too long to parse
            raise InvalidInput(f"manifest {where} line {line} is not valid JSON: "
                               f"{type(exc).__name__}: {exc}") from None
        if not isinstance(row, dict):
            raise InvalidInput(f"manifest {where} line {line}: expected an object with path, "
                               "label")
        rows.add(_check_row(row, where, line), line)


# Where str.splitlines() breaks, and where a text file opened with newline="" does.
_LINE_BREAKS = re.compile(r"\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")
_CSV_LINE_BREAKS = re.compile(r"\r\n|[\n\r]")


def _lines(text: str, breaks: re.Pattern[str], keep_ends: bool = False) -> Iterator[str]:
    """The lines of ``text`` one at a time (as ``splitlines`` or a file's lines give them),
    without a list of every line or a copy of the text."""
    start = 0
    for brk in breaks.finditer(text):
        yield text[start:brk.end() if keep_ends else brk.start()]
        start = brk.end()
    if start < len(text):
        yield text[start:]


def _check_row(row: dict[str, Any], where: Path | str, line: int) -> dict[str, Any]:
    for key in ("path", "label"):
        value = row.get(key)
        if value is None or isinstance(value, bool) or str(value).strip() == "":
            raise InvalidInput(f"manifest {where} line {line}: {key} is missing or empty")
    for key, kinds in (("path", str), ("label", (str, int)), ("group", (str, int))):
        value = row.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
            raise InvalidInput(f"manifest {where} line {line}: {key} is {value!r}; give a "
                               f"{'string' if kinds is str else 'string or an integer'}")
    if row.get("group") == "":
        raise InvalidInput(f"manifest {where} line {line}: group is empty")
    return row


def _is_int(label: str) -> bool:
    return _INT_LABEL.fullmatch(label) is not None


def _manifest_classes(labels: list[str], where: Path | str) -> tuple[str, ...]:
    if all(_is_int(lb) for lb in labels):
        top = max(int(lb) for lb in labels) + 1
        if top > MAX_CLASSES:
            raise InvalidInput(f"manifest {where}: label {top - 1} would make {top} classes, "
                               f"more than {MAX_CLASSES}; use class ids 0..C-1 or class names")
        return tuple(str(i) for i in range(max(top, 1)))
    return tuple(sorted(set(labels)))


def _resolve_labels(labels: list[tuple[int, str]], classes: tuple[str, ...],
                    where: Path | str) -> np.ndarray:
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
            raise InvalidInput(f"manifest {where} line {line}: label {label!r} is not a class "
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
