"""What a job may read, and the TLS credentials of the server and its clients.

A job names files on the server's machine (data, teacher checkpoint). ``InputPolicy`` allows
only files whose real path (symlinks resolved) lies under a configured root, refuses ``..``
in any path, special files (a FIFO would block a reader), and inputs larger than a size limit.
It checks at submission; the worker installs the same policy (``InputPolicy.access``, sent with
StartJob) and ``compression.access`` checks every file again when the worker opens it.
Checkpoints are never unpickled: the library loads them without pickle
(``compression.models.safe_load``), whatever the path.

Roots may also be URI prefixes (``s3://bucket/prefix/``): a job may read objects under them
(teacher, npz and webdataset data) and write its ``output_uri`` there. At submission an
object URI is checked for its form and prefix only; the server does not need the store's
credentials, and the worker checks each object's existence and size when it opens it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from compression import access, storage
from compression.data.sources import URI_SOURCES
from compression.data.webdataset import expand_shards
from compression.errors import InvalidInput
from compression.spec import JobSpec
from service.errors import PermissionDenied
from service.worker_contract import WORKER_TLS_ENV, WORKER_TLS_SERVER_NAME_ENV

__all__ = ["InputPolicy", "DEFAULT_DATA_ROOTS", "job_inputs", "ClientTls", "read_secret",
           "load_token", "server_credentials", "channel_credentials", "worker_channel",
           "WORKER_TLS_ENV", "WORKER_TLS_SERVER_NAME_ENV"]

DEFAULT_DATA_ROOTS = (".", "/usr/share/datasets")  # "." is the server's working directory


@dataclass(frozen=True)
class InputPolicy:
    """roots: directories (made absolute and real at construction) and URI prefixes (kept as
    canonical strings); max_bytes: the largest input (a file, or a directory's or manifest's
    files together); allow_torchscript: whether a TorchScript teacher (code) may be loaded."""

    roots: tuple[Path | str, ...]
    max_bytes: int
    allow_torchscript: bool = False

    @classmethod
    def of(cls, roots: list[str] | tuple[str, ...], max_bytes: int,
           allow_torchscript: bool = False) -> InputPolicy:
        real = access.InputAccess.of(roots).roots or ()
        return cls(tuple(r if storage.is_uri(r) else Path(r) for r in real), max_bytes,
                   allow_torchscript)

    @property
    def access(self) -> access.InputAccess:
        """The same policy as the library checks it when a file is opened."""
        return access.InputAccess(tuple(map(str, self.roots)), self.max_bytes,
                                  self.allow_torchscript)

    def check(self, spec: JobSpec, deep: bool = True) -> None:
        """Raise ``PermissionDenied`` for a path outside the roots, ``InvalidInput`` for one
        too large or a special file. ``deep``: also check every file of a directory or
        manifest, and sizes. Never blocks on a FIFO; reads at most ``max_bytes`` of a
        manifest."""
        for field, pattern in job_inputs(spec):
            for path in _paths_of(spec, field, pattern):
                uri = storage.parse_uri(path, field) if storage.is_uri(path) else None
                if uri is not None and uri.scheme != "file":
                    self._check_object(spec, field, uri)
                else:
                    self._check_local(spec, field, uri.fs_path if uri else path, deep)
        if spec.output_uri:
            try:
                access.checked_target(spec.output_uri, "output_uri", self.access)
            except access.AccessDenied as exc:  # the server's own status for it
                raise PermissionDenied("; ".join(exc.problems)) from None

    def _check_local(self, spec: JobSpec, field: str, path: str, deep: bool) -> None:
        real = self.allowed(field, path)
        if deep and real.exists():
            _refuse_special(field, path, real)
            manifest = spec.data.source == "manifest" and field.startswith("data.")
            self._check_size(field, path, self._files_of(real, field, manifest))

    def _check_object(self, spec: JobSpec, field: str, uri: storage.Uri) -> None:
        """An object input (its URI parsed: credentials-free), for an input that may be one,
        under an allowed prefix. Existence and size are the worker's to check."""
        if field.startswith("data.") and spec.data.source not in URI_SOURCES:
            raise InvalidInput(f"{field} {uri}: source {spec.data.source} reads local paths "
                               f"only; objects can be read by the sources "
                               f"{', '.join(URI_SOURCES)}")
        if not self.access.allows_uri(uri):
            raise PermissionDenied(
                f"{field} {uri} is outside the server's data roots and URI prefixes "
                f"({self._roots()}); ask the operator to add its bucket or prefix (e.g. "
                "s3://bucket/prefix/) to data_roots in the server config")

    def allowed(self, field: str, path: str) -> Path:
        """The real path of ``path`` (relative: to the working directory) if it is under a
        root; else ``PermissionDenied`` naming the field, the path and the roots."""
        if ".." in path.split(os.sep):
            raise PermissionDenied(f"{field} {path!r} contains '..'; give a path without it "
                                   f"under the server's data roots ({self._roots()})")
        real = os.path.realpath(os.path.expanduser(path))
        if not self.access.allows(real):
            via = f" (it resolves to {real})" if real != path else ""
            raise PermissionDenied(
                f"{field} {path!r}{via} is outside the server's data roots ({self._roots()}); "
                "move it under one of them, or ask the operator to add its directory to "
                "data_roots in the server config")
        return Path(real)

    def _check_size(self, field: str, path: str, files: Iterator[Path]) -> None:
        total = 0
        for file in files:
            try:
                total += file.stat().st_size
            except OSError:  # gone, or a dangling link: the library reports what it misses
                continue
            if total > self.max_bytes:
                raise InvalidInput(
                    f"{field} {path!r} holds more than {_size(self.max_bytes)}, the server's "
                    "max_data_bytes; use a smaller input or ask the operator to raise the "
                    "limit")

    def _files_of(self, real: Path, field: str, manifest: bool) -> Iterator[Path]:
        """The files an input stands for, each checked against the roots: a symlink inside
        a directory, or a manifest line, may point anywhere."""
        if real.is_dir():
            try:
                yield from access.walk_files(real, field, self.access)
            except access.AccessDenied as exc:  # the server's own status for it
                raise PermissionDenied("; ".join(exc.problems)) from None
            return
        yield real
        for image in self._manifest_paths(real, field) if manifest else ():
            found = self.allowed(f"an image listed in {field} ({real}):", str(image))
            _refuse_special(f"an image listed in {field} ({real}):", str(image), found)
            if found.is_file():
                yield found

    def _manifest_paths(self, manifest: Path, field: str) -> Iterator[Path]:
        """The image paths a manifest lists (as the library resolves them); rows it cannot
        parse are left to the library to report. Opened through ``compression.access``
        (regular files only) and read up to ``max_bytes``: its size was counted already."""
        data = access.read_input(manifest, field, self.access, limit=self.max_bytes)
        try:
            text = io.StringIO(data.decode("utf-8"), newline="")
            if manifest.suffix.lower() == ".csv":
                values = [row.get("path") for row in csv.DictReader(text)]
            else:
                values = [_json_path(line) for line in text if line.strip()]
        except (UnicodeDecodeError, csv.Error):
            return
        for value in values:
            if isinstance(value, str) and value.strip() and "\0" not in value:
                image = Path(value.strip()).expanduser()
                yield image if image.is_absolute() else manifest.parent / image

    def _roots(self) -> str:
        return ", ".join(str(r) for r in self.roots)


def _refuse_special(field: str, path: str, real: Path) -> None:
    """A FIFO, socket or device as an input: refused at submission, without opening it."""
    kind = access.special_kind(real)
    if kind is not None:
        raise InvalidInput(f"{field} {path!r} is not a regular file ({kind}); give a file or "
                           "a folder")


def _paths_of(spec: JobSpec, field: str, path: str) -> list[str]:
    """The files an input names: a webdataset pattern's shards, else the path itself."""
    if spec.data.source == "webdataset" and field.startswith("data."):
        return expand_shards(path, field)
    return [path]


def job_inputs(spec: JobSpec) -> list[tuple[str, str]]:
    """(field, path) of every file or directory the job reads."""
    data = spec.data
    if data.source == "fashion-mnist":  # test_path and holdout_path are not read
        paths = [("data.path", data.resolved_path)]
    else:
        paths = [("data.path", data.path), ("data.test_path", data.test_path),
                 ("data.holdout_path", data.holdout_path)]
    return [(f, p) for f, p in [*paths, ("teacher.path", spec.teacher.path),
                                ("student.init", spec.student.init)] if p]


def _json_path(line: str) -> object:
    try:
        row = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: a line of deeply nested arrays
        return None
    return row.get("path") if isinstance(row, dict) else None


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- secrets and TLS ------------------------------------------------------------------------


def read_secret(path: str | Path, what: str) -> bytes:
    """A token or PEM file's bytes; ``InvalidInput`` naming the file when it is unreadable
    or empty."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read the {what} {path}: {exc.strerror}") from exc
    if not data.strip():
        raise InvalidInput(f"the {what} {path} is empty")
    return data


def load_token(path: str | Path) -> str:
    """The bearer token in ``path``, surrounding whitespace dropped."""
    return read_secret(path, "auth token file").decode("utf-8", errors="replace").strip()


def server_credentials(cert_file: str, key_file: str,
                       client_ca_file: str = "") -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with ``client_ca_file``, mutual TLS:
    every client must present a certificate that CA signed."""
    ca = read_secret(client_ca_file, "TLS client CA file") if client_ca_file else None
    pair = (read_secret(key_file, "TLS key file"), read_secret(cert_file, "TLS certificate file"))
    return grpc.ssl_server_credentials([pair], root_certificates=ca,
                                       require_client_auth=ca is not None)


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS settings. ca_file: the CA that signed the server's certificate ('' :
    the system's roots); cert_file and key_file: the client's own, for mutual TLS."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""

    @classmethod
    def from_env(cls) -> ClientTls | None:
        """From TPET_TLS_CA, TPET_TLS_CERT and TPET_TLS_KEY; None when none is set."""
        values = [os.environ.get(k, "") for k in ("TPET_TLS_CA", "TPET_TLS_CERT",
                                                   "TPET_TLS_KEY")]
        return cls(*values) if any(values) else None


def channel_credentials(tls: ClientTls) -> grpc.ChannelCredentials:
    if bool(tls.cert_file) != bool(tls.key_file):
        raise InvalidInput("give both a client certificate and its key for mutual TLS "
                           f"(certificate: {tls.cert_file or 'none'}, key: "
                           f"{tls.key_file or 'none'})")
    return grpc.ssl_channel_credentials(
        root_certificates=read_secret(tls.ca_file, "TLS CA file") if tls.ca_file else None,
        private_key=read_secret(tls.key_file, "TLS key file") if tls.key_file else None,
        certificate_chain=(read_secret(tls.cert_file, "TLS certificate file")
                           if tls.cert_file else None))




def worker_channel(target: str) -> grpc.Channel:
    """The worker's channel to the manager: TLS when any ``WORKER_TLS_ENV`` variable or
    ``WORKER_TLS_SERVER_NAME_ENV`` is set (CA, for mutual TLS the worker's certificate and
    key, and the name to check the server's certificate against), else plaintext.

    ``InvalidInput`` names the file that is missing or unreadable, and the variables."""
    files = {k: os.environ.get(k, "") for k in WORKER_TLS_ENV}
    server_name = os.environ.get(WORKER_TLS_SERVER_NAME_ENV, "").strip()
    if not any(files.values()) and not server_name:
        return grpc.insecure_channel(target)
    try:
        credentials = channel_credentials(ClientTls(*files.values()))
    except InvalidInput as exc:
        given = ", ".join(f"{k}={v or '(unset)'}" for k, v in files.items())
        # The hint goes on each problem: a pod's last log line is what its Job reports.
        raise InvalidInput([f"{p}; in a Kubernetes worker pod, check that the Secret named "
                            "by kubernetes.tls_secret holds ca.crt (and tls.crt, tls.key for "
                            "mutual TLS)" for p in exc.problems],
                           f"the worker's TLS settings do not work ({given})") from exc
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else None
    return grpc.secure_channel(target, credentials, options=options)
