"""Checkpoint files: saving (torch.export, safetensors), hashing, and telling formats apart.

Formats are told apart by content where the content says it (zip layout, safetensors header)
and by suffix otherwise, so a TorchScript archive named ``.pt`` or ``.pt2`` is not mistaken for
weights or an exported program. Loaders get the bytes read once; nothing here reopens a file.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import zipfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from compression.errors import InvalidInput, StageFailed
from compression.models.archive import is_zip
from compression.models.state import is_safetensors

__all__ = ["FORMATS", "sha256_bytes", "sha256_file", "save_exported", "save_weights", "sniff",
           "resolve_format"]

FORMATS = ("export", "torchscript", "onnx", "weights")
_SUFFIX_FORMAT = {".pt2": "export", ".onnx": "onnx", ".safetensors": "weights", ".pth": "weights",
                  ".pt": "torchscript", ".ts": "torchscript", ".torchscript": "torchscript"}
# what sniff() found -> the loader that reads it ("pickle": any torch.save file)
_CONTENT_FORMAT = {"export": "export", "torchscript": "torchscript", "pickle": "weights",
                   "safetensors": "weights"}


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}") from None
    return digest.hexdigest()


def _tmp_for(path: Path) -> Path:
    return path.with_name(f"{path.stem}.tmp{path.suffix}")  # same suffix: torch.export wants it


def _replace_atomically(tmp: Path, path: Path) -> Path:
    os.replace(tmp, path)  # readers never see a half-written checkpoint
    return path


def save_exported(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> Path:
    """Write ``model`` as a torch.export program taking [B, *input_shape] float32, B >= 1.

    A CPU, eval-mode copy is exported, so the caller's model keeps its device and mode.
    """
    path = Path(path)
    cpu_model = copy.deepcopy(model).cpu().eval()
    # batch 2 in the example: torch.export specialises sizes 0 and 1
    example = torch.zeros(2, *input_shape)
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(cpu_model, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # torch raises many types; all mean the same here
        raise StageFailed("export", f"torch.export failed for {type(model).__name__} on "
                          f"[B, {', '.join(map(str, input_shape))}]: {exc}") from exc
    tmp = _tmp_for(path)
    torch.export.save(program, str(tmp))
    return _replace_atomically(tmp, path)


def save_weights(model: nn.Module, path: str | Path) -> Path:
    """Write ``model.state_dict()`` as safetensors (every key kept, on CPU).

    Contiguous clones break any storage sharing (tied weights, views), which safetensors
    refuses, while keeping every key so strict loading into the same arch works.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = _tmp_for(path)
    save_file(state, str(tmp))
    return _replace_atomically(tmp, path)


def sniff(data: bytes) -> str:
    """What the bytes say: export, torchscript, pickle, safetensors, or unknown.

    TorchScript is told by its code entries whatever else the zip holds, so a TorchScript
    archive named .pt2, or dressed up with torch.export's marker files, is still TorchScript.
    """
    if is_zip(data):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                # entries sit under one top folder: strip it
                names = {n.split("/", 1)[-1] for n in archive.namelist()}
        except (zipfile.BadZipFile, OSError, ValueError):
            return "unknown"
        if "constants.pkl" in names or any(n.startswith("code/") for n in names):
            return "torchscript"
        if "archive_format" in names or "models/model.json" in names:
            return "export"
        return "pickle" if "data.pkl" in names else "unknown"
    if is_safetensors(data):
        return "safetensors"
    # torch.save's legacy (non-zip) format is a bare pickle: protocol 2+ opens with 0x80
    return "pickle" if data[:1] == b"\x80" else "unknown"


def resolve_format(path: Path, declared: str, content: str) -> str:
    """The loader format for ``path``, whose bytes ``sniff`` found to be ``content``;
    ``declared`` is a TeacherSpec format."""
    if declared != "auto":
        if declared not in FORMATS:
            raise InvalidInput(f"teacher format {declared!r} is not one of auto, "
                               f"{', '.join(FORMATS)}")
        return declared
    if content in _CONTENT_FORMAT:
        return _CONTENT_FORMAT[content]
    if path.suffix.lower() in _SUFFIX_FORMAT:
        return _SUFFIX_FORMAT[path.suffix.lower()]
    raise InvalidInput(
        f"cannot tell the format of {path}: expected a .pt2 (torch.export), TorchScript "
        f"(.pt/.ts), .onnx, or weights (.safetensors/.pth) file; set teacher.format")
