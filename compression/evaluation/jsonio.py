"""JSON files: the one place reports and summaries are written and read."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from compression.errors import InvalidInput

__all__ = ["write_json", "load_json"]


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; return the path.

    The file is written next to its destination and moved into place with ``os.replace``,
    so a reader (or a crash) never sees half a report. NaN and infinity are refused
    because they are not JSON and strict readers reject them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_json(path: str | Path) -> Any:
    """Read a JSON file; a missing or malformed file raises ``InvalidInput`` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read JSON file {path}: {exc.strerror}; check the path") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); "
                           "regenerate or fix the file") from exc
