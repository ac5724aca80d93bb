"""Zip checkpoints (torch.save, TorchScript, torch.export) read from memory, entry by entry.

Python's ``zipfile`` and torch's own reader (miniz) do not agree on every zip: given two
entries of the same name, one takes the first and the other the last. So an archive is read
here once, each entry checked, and then written out again from exactly those entries: torch
only ever reads the rebuilt copy, in which every name occurs once.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from compression import access
from compression.errors import InvalidInput

__all__ = ["Archive", "read_archive", "is_zip"]

_MAX_ENTRIES = 100_000  # far above any real checkpoint; bounds the work on a hostile one
_SEGMENT = re.compile(r"[\w.+@=-]+")  # what torch, and people naming extra files, write
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # TorchScript deflates its code
_SHOW = 5


@dataclass(frozen=True)
class Archive:
    """A checked zip: ``top`` is the folder every entry sits under, ``entries`` maps each
    name below it (``data/weights/weight_0``) to its bytes, in archive order."""

    path: Path
    top: str
    entries: dict[str, bytes]

    def rebuilt(self) -> bytes:
        """The archive written again from the checked entries alone (uncompressed, as
        torch writes it), for torch's own reader."""
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
            for name, data in self.entries.items():
                dst.writestr(zipfile.ZipInfo(f"{self.top}/{name}"), data)
        return out.getvalue()


def is_zip(data: bytes) -> bool:
    """Whether ``data`` has a zip central directory (what every torch archive is)."""
    return zipfile.is_zipfile(io.BytesIO(data))


def _name_problem(name: str) -> str | None:
    if not name or name.startswith("/") or "\\" in name or ":" in name:
        return "an absolute or drive path"
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return "a '..', '.' or empty path segment"
    if not all(_SEGMENT.fullmatch(p) for p in parts):
        return "characters outside letters, digits and ._-+@="
    if len(parts) < 2:
        return "no top folder (torch puts every entry under one folder)"
    return None


def _check_infos(path: Path, infos: list[zipfile.ZipInfo], kind: str) -> str:
    """The common top folder of ``infos``; refuses names and entry kinds torch never writes."""
    if not infos:
        raise InvalidInput(f"{path} is an empty zip, not a {kind}")
    if len(infos) > _MAX_ENTRIES:
        raise InvalidInput(f"{path} holds {len(infos)} entries, more than any {kind}")
    problems, seen = [], set()
    for info in infos:
        name = info.filename
        why = _name_problem(name)
        if why:
            problems.append(f"entry {name!r} has {why}")
        elif name in seen:
            problems.append(f"entry {name!r} occurs more than once; a reader could see "
                            "either copy")
        elif info.compress_type not in _METHODS or info.flag_bits & 0x1:
            problems.append(f"entry {name!r} is encrypted or compressed other than as "
                            "torch does (stored or deflated)")
        seen.add(name)
    total = sum(info.file_size for info in infos)
    if total > access.decoded_limit():  # zipfile stops each entry at its declared size
        problems.append(f"its entries unpack to {total} bytes, over the limit of "
                        f"{access.decoded_limit()}")
    tops = sorted({n.split("/", 1)[0] for n in seen})
    if len(tops) > 1:
        problems.append(f"entries sit under {len(tops)} top folders ({', '.join(tops[:_SHOW])})"
                        "; torch puts every entry under one")
    if problems:
        raise InvalidInput(problems[:_SHOW * 2], f"{path} is not a well-formed {kind}")
    return tops[0]


def read_archive(data: bytes, path: Path, kind: str) -> Archive:
    """Check the zip ``data`` (read from ``path``) and return its entries.

    ``kind`` names what the file should be, for messages ("torch.export archive").
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            top = _check_infos(path, infos, kind)
            # read by ZipInfo, not by name, so each entry is the one that was checked
            entries = {info.filename.split("/", 1)[1]: archive.read(info) for info in infos}
    except InvalidInput:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError,
            RuntimeError, NotImplementedError) as exc:
        raise InvalidInput(f"{path} is not a readable {kind}: {exc}") from None
    return Archive(path, top, entries)
