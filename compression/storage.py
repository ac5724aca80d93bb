"""Object storage through fsspec: URIs parsed, checked, read into local copies and written.

A job's inputs and its ``output_uri`` may name objects: ``s3://bucket/key`` (s3fs),
``gs://bucket/key`` (gcsfs, an optional extra), ``https://host/path`` (read only) and
``file:///path`` (a local file, which ``compression.access`` reads with its local checks).
Credentials come the way each store's own client finds them (environment variables, config
files, workload identity); a URI that carries them itself (``user:password@`` or a query
string, where a presigned URL keeps its signature) is refused, so none can reach a spec, a
report, a log line or an event. ``redact`` strips both from any URI a message shows.

Reads go through ``open_copy``: the object's metadata is checked first (a file, not a
folder; no larger than the limit), then at most that many bytes are copied into an unnamed
temporary file, so readers get a real, seekable local file whatever the store. Streamed
image folders add two: ``list_below`` lists the objects under a prefix, and ``read_range``
reads an image's first bytes (its header) without copying the rest.

Store errors become ``InvalidInput`` naming the URI: a missing bucket, a missing key, denied
or absent credentials. Anything else (an unreachable endpoint) is a failed stage, not the
user's mistake, and may succeed when retried.
"""

from __future__ import annotations

import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, Iterator
from urllib.parse import unquote, urlsplit

from compression.errors import InvalidInput, StageFailed

__all__ = ["READ_SCHEMES", "WRITE_SCHEMES", "Uri", "is_uri", "redact", "parse_uri",
           "prefix_problem", "under", "stat", "exists", "open_copy", "read_range", "list_below",
           "open_write", "remove"]

READ_SCHEMES = ("s3", "gs", "https", "file")
WRITE_SCHEMES = ("s3", "gs", "file")
_ALIASES = {"gcs": "gs"}
# The package that serves each scheme, and how to get it when it is missing.
_PACKAGES = {"s3": ("s3fs", "pip install s3fs"),
             "gs": ("gcsfs", "pip install 'teachers-pet[gcs]' (or pip install gcsfs)"),
             "https": ("aiohttp", "pip install aiohttp"), "file": ("fsspec", "pip install fsspec")}
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_COPY_CHUNK = 1 << 24


class _NoObject(InvalidInput):
    """Nothing at the URI's key, in a bucket that exists: ``exists`` answers False."""


@dataclass(frozen=True)
class Uri:
    """A checked URI. netloc: bucket or host ('' for file://); key: the path inside it,
    without a leading '/'."""

    scheme: str
    netloc: str
    key: str

    def __str__(self) -> str:
        return f"{self.scheme}://{self.netloc}/{self.key}"

    @property
    def fs_path(self) -> str:
        """The path fsspec's filesystem for ``scheme`` takes."""
        if self.scheme == "https":
            return str(self)
        return f"/{self.key}" if self.scheme == "file" else f"{self.netloc}/{self.key}"

    def join(self, name: str) -> Uri:
        return Uri(self.scheme, self.netloc, f"{self.key.rstrip('/')}/{name}".lstrip("/"))


def is_uri(path: Any) -> bool:
    """Whether ``path`` is a string of the form ``scheme://...`` (any scheme)."""
    return isinstance(path, str) and _SCHEME.match(path) is not None


def redact(text: str) -> str:
    """``text`` without user info, query string or fragment when it is a URI; else as is."""
    if not is_uri(text):
        return text
    try:
        parts = urlsplit(text)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:
        return f"{_SCHEME.match(text).group(1)}://(unparsable)"
    return f"{parts.scheme}://{host}{parts.path}"


def parse_uri(text: str, what: str, schemes: tuple[str, ...] = READ_SCHEMES) -> Uri:
    """The checked ``Uri`` of ``text``; ``InvalidInput`` naming ``what`` and the redacted
    URI for an unknown scheme, credentials in the URI, or '.' / '..' segments."""
    shown = redact(text)
    problem = _uri_problem(text, schemes)
    if problem:
        raise InvalidInput(f"{what} {shown!r} {problem}")
    parts = urlsplit(text)
    scheme = _ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    netloc = parts.netloc.lower() if scheme == "https" else parts.netloc
    return Uri(scheme, "" if scheme == "file" else netloc, parts.path.lstrip("/"))


def _uri_problem(text: str, schemes: tuple[str, ...]) -> str | None:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a malformed port
    except ValueError as exc:
        return f"is not a valid URI ({exc})"
    scheme = _ALIASES.get(parts.scheme.lower(), parts.scheme.lower())
    if scheme not in schemes:
        listed = ", ".join(f"{s}://" for s in schemes)
        return f"uses scheme {parts.scheme}://; use {listed} or a local path"
    if "@" in parts.netloc or parts.query or parts.fragment or "?" in text or "#" in text:
        return ("carries credentials or parameters (user info, a query string or a fragment); "
                "give the plain URI and credentials the store's usual way (environment, "
                "config files, workload identity)")
    if "::" in text or any(ord(c) < 32 for c in text):
        return "contains '::' or a control character; give one plain URI"
    if scheme == "file" and parts.netloc not in ("", "localhost"):
        return "names a host; a file:// URI is a path on this machine (file:///path)"
    if scheme != "file" and not parts.netloc:
        return "names no bucket or host"
    if any(unquote(s) in (".", "..") for s in parts.path.split("/")):
        return "contains a '.' or '..' segment; give the object's own path"
    return None


def prefix_problem(text: str) -> str | None:
    """Why ``text``, when it is a URI, cannot be an allowed URI prefix (None when it can,
    or when it is a local path)."""
    problem = _uri_problem(text, READ_SCHEMES) if is_uri(text) else None
    return None if problem is None else f"URI prefix {redact(text)!r} {problem}"


def under(uri: Uri, prefix: Uri) -> bool:
    """Whether ``uri`` lies under ``prefix``: same store and bucket, and ``prefix``'s key is
    empty, equal to the URI's key, or a whole leading part of it ('a/b' holds 'a/b/c', not
    'a/bc')."""
    if (uri.scheme, uri.netloc) != (prefix.scheme, prefix.netloc):
        return False
    top = prefix.key.rstrip("/")
    return not top or uri.key == top or uri.key.startswith(top + "/")


def _filesystem(uri: Uri, what: str) -> Any:
    package, hint = _PACKAGES[uri.scheme]
    try:
        import fsspec  # imported here: a job with local inputs only never needs it

        return fsspec.filesystem(uri.scheme)
    except ImportError:
        raise InvalidInput(f"{what} {uri}: {uri.scheme}:// URIs need the {package} package, "
                           f"which is not installed; {hint}") from None


@contextmanager
def _store_errors(uri: Uri, what: str, verb: str = "read") -> Iterator[None]:
    """Map what a store raises to errors naming ``uri`` (see the module docstring)."""
    try:
        yield
    except FileNotFoundError as exc:
        if "bucket" in str(exc).lower() and uri.scheme in ("s3", "gs"):
            raise InvalidInput(f"{what} {uri}: the bucket {uri.netloc!r} does not exist (or "
                               "these credentials cannot see it); check the URI") from None
        raise _NoObject(f"{what} {uri} does not exist (no object at that key); check the "
                        "URI") from None
    except PermissionError as exc:
        raise InvalidInput(f"{what} {uri}: access denied ({_reason(exc)}); check the "
                           f"credentials this process uses and that they may {verb} it") from None
    except IsADirectoryError:
        raise InvalidInput(f"{what} {uri} is a folder, not an object; name a file") from None
    except InvalidInput:
        raise
    except Exception as exc:  # the stores' own types: botocore's, gcsfs's, aiohttp's
        if "credential" in type(exc).__name__.lower():
            raise InvalidInput(f"{what} {uri}: no usable credentials ({_reason(exc)}); set "
                               "them the store's usual way (environment variables, config "
                               "files, workload identity)") from None
        raise StageFailed("storage", f"cannot {verb} {what} {uri}: "
                          f"{type(exc).__name__}: {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def stat(uri: Uri, what: str) -> dict[str, Any]:
    """The object's metadata: at least ``type`` ('file' or 'directory') and ``size`` (bytes,
    None when the store does not say)."""
    fs = _filesystem(uri, what)
    with _store_errors(uri, what):
        info = fs.info(uri.fs_path)
    return {**info, "type": info.get("type", "file"), "size": info.get("size")}


def exists(uri: Uri, what: str) -> bool:
    """Whether an object (or folder) is at ``uri``; a missing bucket or denied access is
    ``InvalidInput``, not False."""
    fs = _filesystem(uri, what)
    try:
        with _store_errors(uri, what):
            fs.info(uri.fs_path)
    except _NoObject:
        return False
    return True


def open_copy(uri: Uri, what: str, limit: int | None, default_limit: int) -> BinaryIO:
    """A local, seekable, unnamed copy of the object at ``uri``, positioned at its start.

    ``limit`` (None: none) is checked against the object's declared size before a byte is
    read; at most the declared size (or ``limit`` / ``default_limit`` when the store
    declares none) is copied, and a copy that comes out another size is refused.
    """
    info = stat(uri, what)
    if info["type"] != "file":
        raise InvalidInput(f"{what} {uri} is a folder, not an object; name a file")
    size = info["size"]
    if limit is not None and size is not None and size > limit:
        raise InvalidInput(f"{what} {uri} is {size} bytes, over the limit of {limit} bytes; "
                           "use a smaller file or ask the operator to raise max_data_bytes")
    cap = size if size is not None else (default_limit if limit is None else limit)
    copy = tempfile.TemporaryFile()
    try:
        with _store_errors(uri, what), _filesystem(uri, what).open(uri.fs_path, "rb") as src:
            copied = _copy(src, copy, cap + 1)
        if copied > cap or (size is not None and copied != size):
            raise InvalidInput(f"{what} {uri} changed while it was read ({copied} bytes "
                               f"read, {size if size is not None else cap} expected); "
                               "read it again when it is complete")
        copy.seek(0)
        return copy
    except BaseException:
        copy.close()
        raise


def read_range(uri: Uri, what: str, start: int, end: int) -> bytes:
    """Bytes ``start`` up to ``end`` (exclusive) of the object at ``uri``; fewer where the
    object is shorter. One ranged request: no local copy of the whole object."""
    with _store_errors(uri, what):
        return bytes(_filesystem(uri, what).cat_file(uri.fs_path, start=start, end=end))


def list_below(uri: Uri, what: str) -> list[tuple[str, str, int | None]]:
    """(path below ``uri``, 'file' or 'directory', size) of every object under the folder
    ``uri``, and of the folders their keys imply; the path is relative ('cat/001.png')."""
    if uri.scheme not in ("s3", "gs"):
        raise InvalidInput(f"{what} {uri}: only a bucket (s3://, gs://) can be listed as a "
                           "folder; list its files in a manifest instead")
    top = uri.key.rstrip("/")
    base = f"{uri.netloc}/{top}".rstrip("/")
    with _store_errors(uri, what, "list"):
        found = _filesystem(uri, what).find(base, withdirs=True, detail=True)
    out = []
    for name, info in found.items():
        if name.startswith(base + "/") and name != base + "/":
            out.append((name[len(base) + 1:].rstrip("/"), info.get("type", "file"),
                        info.get("size")))
    return out


def _copy(src: BinaryIO, dst: BinaryIO, n: int) -> int:
    done = 0
    while done < n:
        chunk = src.read(min(_COPY_CHUNK, n - done))
        if not chunk:
            break
        dst.write(chunk)
        done += len(chunk)
    return done


@contextmanager
def open_write(uri: Uri, what: str) -> Iterator[BinaryIO]:
    """A writable stream to the object at ``uri`` (created or replaced when it closes)."""
    fs = _filesystem(uri, what)
    with _store_errors(uri, what, "write"):
        if uri.scheme == "file":  # a local folder may not exist yet; a bucket must
            fs.makedirs(uri.fs_path.rpartition("/")[0] or "/", exist_ok=True)
        with fs.open(uri.fs_path, "wb") as stream:
            yield stream


def remove(uri: Uri, what: str) -> None:
    """Delete the object at ``uri`` if it is there."""
    fs = _filesystem(uri, what)
    try:
        with _store_errors(uri, what, "delete"):
            fs.rm_file(uri.fs_path)
    except _NoObject:
        pass
