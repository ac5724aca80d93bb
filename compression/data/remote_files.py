"""The ``imagefolder`` and ``manifest`` sources in object storage, for the streaming path.

``data.path`` (test_path, holdout_path) may be a URI (``s3://bucket/prefix/``,
``gs://bucket/prefix/``; a manifest also ``https://host/path.csv``). An image folder is
listed through fsspec: the first path segment below the prefix is the class, sorted, and the
images under it are taken in the order a local folder's would be (``images.list_imagefolder``).
A manifest is read as a local one is (``images.parse_manifest_rows``: the same rows, checks
and label rules); its image paths may be full URIs, or keys relative to the manifest's own
folder (``cat/001.png``, ``../shared/x.png``; ``/key`` starts at the bucket's root).

``index_remote`` decodes nothing (``read_remote`` decodes the split it indexed, for the
in-memory path). Each image's header is read with one ranged request (the whole object only
when its header runs past the first ``_HEAD_BYTES``) to learn the split's shape and refuse a
bad file now; the image itself is read when a batch needs it, in a DataLoader
worker, through ``compression.access``, which checks it against the job's URI prefixes at
that moment. The prefixes are checked here too, for every image, before its header is read:
a manifest line outside them is refused, naming the line and the URI.
"""

from __future__ import annotations

import io
import posixpath
from array import array
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from compression import access, storage
# The rows, their checks and the label rules are the local manifest's own: both read alike.
from compression.data.images import (IMAGE_SUFFIXES, MANIFEST_SUFFIXES, check_class_folders,
                                     manifest_text, parse_manifest_rows)
from compression.data.index import ImageIndex, PackedNames, image_shape, probe_image
from compression.data.raw import RawSplit, check_not_empty
from compression.errors import InvalidInput

__all__ = ["index_remote", "read_remote", "list_remote_imagefolder", "parse_remote_manifest"]

_HEAD_BYTES = 1 << 16  # enough for a PNG header, and a JPEG's but for large EXIF / ICC blocks
_PROBE_THREADS = 16  # probing waits on the network, not the CPU

Probe = tuple[str, str, int | None]  # (URI, what it is in messages, size when known)


def index_remote(source: str, path: str, size: int, classes: tuple[str, ...] | None,
                 workers: int = 0) -> RawSplit:
    """Split of an ``imagefolder`` or ``manifest`` at the URI ``path``, x an ``ImageIndex``."""
    if source == "imagefolder":
        probes, y, names = list_remote_imagefolder(path, classes)
        attr = None
    elif source == "manifest":
        probes, y, attr, names = parse_remote_manifest(path, classes)
    else:
        raise InvalidInput(f"data.source {source!r} cannot read image files from {path}")
    shapes = _probe_all(probes, size, max(workers, _PROBE_THREADS))
    uris = [uri for uri, _, _ in probes]
    n = len(uris)
    index = ImageIndex(files=PackedNames.of(uris), file_of=np.arange(n, dtype=np.int64),
                       offset=np.full(n, -1, np.int64), length=np.full(n, -1, np.int64),
                       sample_shape=image_shape(shapes, uris), resize=size, origin=path)
    return RawSplit(index, y, attr, names, path)


def read_remote(source: str, path: str, size: int, classes: tuple[str, ...] | None
                ) -> RawSplit:
    """As ``index_remote``, every image then decoded: x [N, C, H, W] uint8 in memory."""
    split = index_remote(source, path, size, classes)
    index, limit = split.x, access.decoded_limit()
    if index.nbytes > limit:
        raise InvalidInput(f"the {len(index)} images of {path} take {index.nbytes} bytes "
                           f"decoded, more than the {limit} bytes a job may load; stream them "
                           "(data.in_memory: never), use fewer or smaller images, or set "
                           "data.image_size")
    with ThreadPoolExecutor(_PROBE_THREADS) as pool:  # each read waits on the store
        x = np.stack(list(pool.map(index.decode, range(len(index)))))
    return RawSplit(x, split.y, split.attr, split.class_names, split.origin)


def list_remote_imagefolder(path: str, classes: tuple[str, ...] | None
                            ) -> tuple[list[Probe], np.ndarray, tuple[str, ...]]:
    """The images of a class-per-folder tree under the URI ``path``, their labels and the
    class names; ``classes`` (train's names) must match its folders exactly."""
    root = _allowed(storage.parse_uri(path, "image folder"), "image folder")
    shown = str(root).rstrip("/")
    entries = storage.list_below(root, "image folder")
    dirs = tuple(sorted({p.split("/")[0] for p, kind, _ in entries
                         if ("/" in p or kind == "directory") and not p.startswith(".")}))
    if not dirs:
        raise InvalidInput(f"image folder {shown} has no class folders (no objects under "
                           "that prefix); expected root/<class_name>/*.png")
    check_class_folders(shown, dirs, classes)
    label = {name: c for c, name in enumerate(dirs)}
    # Sorted by path segments, as a local folder's Paths sort: 'b/x' before 'b-c/x'.
    files = sorted((p.split("/"), p, nbytes) for p, kind, nbytes in entries
                   if kind != "directory" and "/" in p and p.split("/")[0] in label
                   and posixpath.splitext(p)[1].lower() in IMAGE_SUFFIXES)
    files.sort(key=lambda f: label[f[0][0]])  # stable: classes in order, sorted within
    check_not_empty(len(files), f"image folder {shown} (no .png/.jpg/.jpeg files)")
    probes = [(str(root.join(p)), "image", nbytes) for _, p, nbytes in files]
    return probes, np.asarray([label[parts[0]] for parts, _, _ in files], np.int64), dirs


def parse_remote_manifest(path: str, classes: tuple[str, ...] | None
                          ) -> tuple[list[Probe], np.ndarray, np.ndarray | None,
                                     tuple[str, ...]]:
    """A manifest at the URI ``path``: its images, labels, attribute values (or None) and
    class names, read and checked by ``images.parse_manifest_rows`` as a local one is."""
    uri = storage.parse_uri(path, "manifest")
    suffix = posixpath.splitext(uri.key)[1].lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise InvalidInput(f"manifest {uri} must end in .csv or .jsonl")
    lines = array("q")  # each row's line, for the messages about its image

    def resolve(value: str, line: int) -> str:
        lines.append(line)
        return _image_uri(uri, value, line)

    uris, y, attr, classes = parse_manifest_rows(manifest_text(str(uri)), str(uri),
                                                 suffix == ".csv", classes, resolve)
    probes: list[Probe] = [(image, f"image (manifest {uri} line {line})", None)
                           for image, line in zip(uris, lines)]
    return probes, y, attr, classes


def _image_uri(manifest: storage.Uri, value: Any, line: int) -> str:
    """The URI of the image a manifest row names: a full URI as it is, a key relative to the
    manifest's folder (or, starting with '/', to its bucket's root) joined to it."""
    text = str(value).strip()
    what = f"image (manifest {manifest} line {line})"
    if "\0" in text or any(ord(c) < 32 for c in text):
        raise InvalidInput(f"manifest {manifest} line {line}: path contains a control character")
    if storage.is_uri(text):
        return str(storage.parse_uri(text, what))
    joined = (text.lstrip("/") if text.startswith("/")
              else posixpath.join(posixpath.dirname(manifest.key), text))
    key = posixpath.normpath(joined)
    if key in (".", "..") or key.startswith("../"):
        raise InvalidInput(f"manifest {manifest} line {line}: path {text!r} leads out of "
                           f"the bucket {manifest.netloc!r}; give a key inside it or a full URI")
    return str(storage.parse_uri(str(storage.Uri(manifest.scheme, manifest.netloc, key)), what))


def _allowed(uri: storage.Uri, what: str) -> storage.Uri:
    """``uri`` when the job's policy allows it (a file:// URI: checked when opened)."""
    if uri.scheme != "file":
        access.require_uri(uri, what)
    return uri


def _probe_all(probes: list[Probe], size: int, threads: int) -> list[tuple[int, int, int]]:
    if len(probes) < 2 or threads < 2:
        return [_probe(p, size) for p in probes]
    with ThreadPoolExecutor(min(threads, len(probes))) as pool:
        return list(pool.map(lambda p: _probe(p, size), probes))


def _probe(probe: Probe, size: int) -> tuple[int, int, int]:
    """(H, W, C) of one image, from its header: the object's first bytes, or all of them
    when the header runs further."""
    text, what, nbytes = probe
    uri = _allowed(storage.parse_uri(text, what), what)
    if uri.scheme == "file":  # a local file named in a remote manifest: the local checks
        with access.open_input(text, what) as f:
            return probe_image(f, text, f"{what} {text}", size)
    limit = access.current().max_bytes
    if nbytes is None:
        nbytes = storage.stat(uri, what)["size"]
    if limit is not None and nbytes is not None and nbytes > limit:
        raise InvalidInput(f"{what} {uri} is {nbytes} bytes, over the limit of {limit} bytes; "
                           "use a smaller file or ask the operator to raise max_data_bytes")
    head = storage.read_range(uri, what, 0, _HEAD_BYTES)
    try:
        return probe_image(io.BytesIO(head), text, f"{what} {uri}", size)
    except InvalidInput:
        if len(head) < _HEAD_BYTES:
            raise
    with access.open_input(text, what) as f:  # the whole object, its size checked again
        return probe_image(f, text, f"{what} {uri}", size)
