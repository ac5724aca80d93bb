"""The bundle's upload to ``output_uri``: every file first, report.json last.

report.json is the bundle's commit marker in object storage as on disk. Object stores
replace one object at a time, with no transaction over several, so the order gives readers
the guarantee: a report.json already at the target (an earlier run's) is deleted before the
first file goes up, every bundle file is uploaded, and report.json goes last, naming each
object by URI with the SHA-256 and size of the bytes sent (its ``uploads`` section). A
reader that finds ``<output_uri>/report.json`` finds every object it names complete; one
that finds none waits, whatever else is there.

The target is checked when the job starts (``check_target``), so a wrong scheme, a URI
outside the operator's prefixes, a missing bucket or refused credentials end the job before
training rather than after it. The job needs read, write and delete rights on the prefix.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Iterable

from compression import access, storage
from compression.artifacts.bundle import REPORT
from compression.errors import StageFailed
from compression.evaluation import write_json

__all__ = ["MARKER", "check_job", "check_target", "upload_bundle", "publish", "upload_summary"]

MARKER = REPORT  # the object whose presence says the bundle is complete
_WHAT = "output_uri"
_CHUNK = 1 << 24


def check_target(output_uri: str, policy: access.InputAccess | None = None,
                 probe: bool = True) -> storage.Uri:
    """The checked target: a writable scheme (s3, gs, file), credentials-free, under the
    policy's URI prefixes (a file:// target under its local roots). ``probe``: also ask the
    store about the marker, which fails now for a missing bucket or refused credentials."""
    uri = access.checked_target(output_uri, _WHAT, policy)
    if probe and uri.scheme != "file":
        storage.exists(uri.join(MARKER), _WHAT)
    return uri


def check_job(spec: Any) -> None:
    """Every URI of the job spec ``spec`` well formed and free of credentials, and its
    output target checked (``check_target``), before the job does any work: a URI with a
    secret in it must not reach the report even when the job never opens it."""
    data = spec.data
    for field, text in (("teacher.path", spec.teacher.path), ("data.path", data.path),
                        ("data.test_path", data.test_path),
                        ("data.holdout_path", data.holdout_path),
                        ("student.init", spec.student.init)):
        for part in filter(storage.is_uri, (p.strip() for p in text.split("::"))):
            storage.parse_uri(part, field)
    if spec.output_uri:
        check_target(spec.output_uri)


def upload_bundle(out_dir: str | Path, output_uri: str, names: Iterable[str],
                  write_report: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """Upload ``out_dir``'s files ``names`` (relative, POSIX) under ``output_uri``, then
    report.json; return the ``uploads`` section.

    ``write_report(uploads)`` must rewrite ``out_dir``/report.json with that section before
    it goes up. Returns {"uri", "marker", "artifacts": {name: {"uri", "sha256", "bytes"}}}.
    """
    out_dir, target = Path(out_dir), check_target(output_uri, probe=False)
    marker = target.join(MARKER)
    storage.remove(marker, _WHAT)  # first: no reader may pair an old report with new files
    artifacts = {name: _put(out_dir / name, target.join(name))
                 for name in sorted(set(names) - {MARKER})}
    uploads = {"uri": str(target), "marker": str(marker), "artifacts": artifacts}
    write_report(uploads)
    _put(out_dir / MARKER, marker)  # last: its arrival publishes the bundle
    return uploads


def publish(out_dir: str | Path, output_uri: str, report: Any) -> Any:
    """Upload the bundle a job report describes (its ``files``) and return the report with
    its ``uploads`` section, as report.json now holds it on disk and in the store."""
    final = [report]

    def write(uploads: dict[str, Any]) -> None:
        final[0] = report.with_sections(uploads=uploads)
        write_json(Path(out_dir) / REPORT, final[0].to_dict())

    upload_bundle(out_dir, output_uri, report.files, write)
    return final[0]


def upload_summary(report: Any) -> dict[str, Any]:
    """What the upload stage's event says: where the bundle went, and how many objects."""
    return {"uri": report.uploads["uri"], "objects": len(report.uploads["artifacts"]) + 1}


def _put(local: Path, uri: storage.Uri) -> dict[str, Any]:
    """Stream ``local`` to ``uri``, hashing the bytes as they are sent; the stored object's
    size is checked afterwards."""
    digest, sent = hashlib.sha256(), 0
    with open(local, "rb") as src, storage.open_write(uri, _WHAT) as dst:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            digest.update(chunk)
            dst.write(chunk)
            sent += len(chunk)
    stored = storage.stat(uri, _WHAT)["size"]
    if stored is not None and stored != sent:
        raise StageFailed("upload", f"{uri} holds {stored} bytes after {sent} were sent; "
                          "run the job again")
    return {"uri": str(uri), "sha256": digest.hexdigest(), "bytes": sent}
