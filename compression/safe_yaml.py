"""Reading the YAML files users hand us (job files, the server config) with bounded cost.

``yaml.safe_load`` never runs code, but a small file can still exhaust whoever reads it: an
alias "bomb" (a billion laughs) turns a few hundred bytes into 10^9 values wherever the data is
walked; 20,000 nested brackets overflow Python's stack in PyYAML's recursive composer; a large,
binary or special file (a FIFO blocks its reader forever) fails deep inside. ``load_yaml_file``
refuses each of these with ``InvalidInput`` naming the file and the limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from compression.errors import InvalidInput

__all__ = ["load_yaml_file", "load_yaml_text", "MAX_YAML_BYTES", "MAX_YAML_DEPTH",
           "MAX_YAML_VALUES"]

MAX_YAML_BYTES = 1 << 20  # a job file is a few KiB; the server caps specs at 1 MiB too
MAX_YAML_DEPTH = 64  # a job nests about 5 levels; PyYAML recurses ~3 frames per level
MAX_YAML_VALUES = 100_000  # every value once expanded, an alias counting all it stands for


class _Refused(Exception):
    """The document exceeds a limit (not a YAMLError: it says what to change instead)."""


class _BoundedLoader(yaml.SafeLoader):
    """A SafeLoader that counts values as composed (an alias adds the size of its target,
    so the count is that of the fully expanded data) and bounds the nesting depth."""

    def __init__(self, stream: str, name: str):
        super().__init__(stream)
        self.name = name  # error marks say the file, not "<unicode string>"
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values in its expanded subtree

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:  # the anchor is still open: the alias is inside its target
                    raise _Refused(f"alias *{event.anchor} (line {event.start_mark.line + 1}) "
                                   "refers to a value that contains it; remove the cycle")
                self._count(size, event)
            return super().compose_node(parent, index)
        event = self.peek_event()
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(f"nests deeper than {MAX_YAML_DEPTH} levels (line "
                           f"{event.start_mark.line + 1}); flatten it")
        before = self._values
        self._count(1, event)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._sizes[id(node)] = self._values - before
        return node

    def _count(self, n: int, event: Any) -> None:
        self._values += n
        if self._values > MAX_YAML_VALUES:
            raise _Refused(f"expands to more than {MAX_YAML_VALUES:,} values (line "
                           f"{event.start_mark.line + 1}; YAML aliases repeat what they "
                           "name); write the values out or use fewer aliases")


def load_yaml_text(text: str, source: str) -> Any:
    """The plain data of one YAML document; ``source`` names it in errors."""
    loader = _BoundedLoader(text, source)
    try:
        return loader.get_single_data()
    except _Refused as exc:
        raise InvalidInput(f"{source} {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source} is not valid YAML: {exc}") from None
    except RecursionError:  # a limit above should come first; never a traceback
        raise InvalidInput(f"{source} nests too deeply; flatten it") from None
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path, what: str = "YAML file",
                   max_bytes: int = MAX_YAML_BYTES) -> Any:
    """The plain data of the YAML (or JSON) file at ``path``: a regular file of at most
    ``max_bytes`` bytes of UTF-8. ``what`` ("job file", "server config") names it in errors."""
    source = f"{what} {path}"
    data = _read_bounded(Path(path), source, max_bytes)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at "
                           f"offset {exc.start}); save it as UTF-8") from None
    return load_yaml_text(text, source)


def _read_bounded(path: Path, source: str, max_bytes: int) -> bytes:
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise InvalidInput(f"cannot read {source}: it is {kind}; give a YAML file")
        chunks, size = [], 0
        while size <= max_bytes:  # read no more than the limit allows, whatever the file
            chunk = os.read(fd, min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise InvalidInput(f"cannot read {source}: {exc.strerror}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise InvalidInput(f"{source} is larger than {max_bytes // 1024} KiB; a job or config "
                           "file is a few KiB: move data out of it")
    return data
