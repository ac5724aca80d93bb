"""``torch.load`` for files nobody vouched for: weights come back, pickled code is refused.

``torch.load(weights_only=True)`` rebuilds only tensors and plain containers; anything else
(a whole nn.Module, a function) stops it before any code runs. This module turns its errors
into messages that say what the file is and how to re-save it, and never suggests
``weights_only=False``.
"""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path
from typing import Callable

import torch

from compression.errors import InvalidInput

__all__ = ["PICKLED_CODE_HELP", "load_weights_only", "check_export_archive"]

PICKLED_CODE_HELP = (
    "re-save the model from the code that defines it, either as an exported program: "
    "torch.export.save(torch.export.export(model.eval(), (example,)), 'teacher.pt2'), "
    "or as weights: safetensors.torch.save_file(model.state_dict(), 'teacher.safetensors') "
    "and set teacher.arch (and teacher.width) to its zoo architecture")
_STATE_DICT_MODULES = ("torch.", "collections.OrderedDict")  # what torch.save(state) imports
_OBJECT_PREFIXES = ("custom_obj_", "opaque_obj_")  # .pt2 constants that are pickled objects
_NATIVE_DIRS = ("data/aotinductor/",)  # .pt2 parts that torch.export.load loads as libraries


def _pickle_bytes(path: Path) -> bytes:
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("data.pkl")]
            return archive.read(names[0]) if names else b""
    return path.read_bytes()


def _imported_names(data: bytes) -> list[str]:
    """Callables a pickle stream imports, read statically (never run); '?' when unnamed."""
    names: list[str] = []
    strings: list[str] = []  # STACK_GLOBAL takes module and name from the two last pushes
    stream = io.BytesIO(data)
    try:
        while stream.tell() < len(data):  # legacy torch.save files hold several pickles
            for op, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str):
                    strings.append(arg)
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]) if len(strings) >= 2 else "?")
    except ValueError:
        pass  # the rest is not a pickle (garbage, or raw tensor bytes)
    return names


def _imports_code(path: Path) -> bool:
    """Whether the file's pickles import anything beyond what a state dict needs."""
    try:
        names = _imported_names(_pickle_bytes(path))
    except (OSError, zipfile.BadZipFile):
        return False
    return any(not n.startswith(_STATE_DICT_MODULES) for n in names)


def _refusal(path: Path, exc: Exception) -> InvalidInput:
    found = re.search(r"GLOBAL ([\w.]+)", str(exc))
    what = f" (it references {found.group(1)})" if found else ""
    return InvalidInput(
        f"{path} contains pickled Python code{what}, e.g. a whole nn.Module saved with "
        f"torch.save(model); such files are never loaded because unpickling them can run "
        f"arbitrary code. To use it, {PICKLED_CODE_HELP}", "unsafe teacher checkpoint")


def _unreadable(path: Path, exc: Exception) -> InvalidInput:
    # torch's own text goes on to recommend weights_only=False; keep only the reason
    text = str(exc).split("WeightsUnpickler error:")[-1].strip()
    reason = text.splitlines()[0] if text else type(exc).__name__
    return InvalidInput(f"{path} is not a readable torch weights file ({reason}); expected "
                        "a state dict saved with torch.save(model.state_dict(), ...)")


def load_weights_only(path: Path) -> object:
    """What ``torch.save`` wrote to ``path`` (on CPU), if it is made of tensors and containers."""
    try:
        with warnings.catch_warnings():  # protocol notices: failures are reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global": a class or function; other failures (e.g. a raw
        # protocol-4 pickle) still count as code when the stream imports anything
        if "Unsupported global" in str(exc) or _imports_code(path):
            raise _refusal(path, exc) from None
        raise _unreadable(path, exc) from None
    except RuntimeError as exc:
        if "TorchScript" in str(exc):
            raise InvalidInput(f"{path} is a TorchScript archive, not a weights file; set "
                               "teacher.format to torchscript (or auto)") from None
        raise _unreadable(path, exc) from None
    except (EOFError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def _embedded_code(path: Path, member: str) -> InvalidInput:
    return InvalidInput(
        f"{path} embeds code or pickled Python objects in {member}, which torch.export.load "
        f"would run; it is never loaded. To use it, {PICKLED_CODE_HELP}",
        "unsafe teacher checkpoint")


def _pickled_members(names: dict[str, str], read: Callable[[str], bytes]) -> list[str]:
    """Members of a .pt2 that torch.export.load unpickles (``names``: without top folder)."""
    # sample inputs, legacy state dicts and pre-2.7 serialized_*.pt files are torch.save files
    out = [n for n in names if n.endswith(".pt")]
    for folder in ("weights", "constants"):
        for cfg in (n for n in names if n.startswith(f"data/{folder}/") and
                    n.endswith(f"_{folder}_config.json")):
            entries = json.loads(read(names[cfg])).get("config", {})
            out += [f"data/{folder}/{e['path_name']}" for e in entries.values()
                    if e.get("use_pickle") or e["path_name"].startswith(_OBJECT_PREFIXES)]
    return out


def _vet_export_archive(path: Path, archive: zipfile.ZipFile) -> None:
    names = {n.split("/", 1)[-1]: n for n in archive.namelist()}
    if any(n.startswith(_NATIVE_DIRS) for n in names):
        raise _embedded_code(path, "data/aotinductor (compiled native code)")
    for member in _pickled_members(names, archive.read):
        if member.rsplit("/", 1)[-1].startswith(_OBJECT_PREFIXES):
            raise _embedded_code(path, member)  # objects have no safe loader
        if member not in names:
            continue  # torch.export.load reports missing parts itself
        try:
            torch.load(io.BytesIO(archive.read(names[member])), map_location="cpu",
                       weights_only=True)
        except Exception:  # any refusal: torch.export.load would retry it unrestricted
            raise _embedded_code(path, member) from None


def check_export_archive(path: Path) -> None:
    """Refuse a .pt2 that needs more than tensors and a graph (read without running code).

    torch.export.load itself unpickles some parts with ``weights_only=False`` (pickled
    tensors, custom and opaque objects, and sample inputs as a fallback) and loads compiled
    AOTInductor libraries; a crafted archive could run code there, so each such part is
    vetted the safe way first.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            _vet_export_archive(path, archive)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a readable torch.export archive: {exc}") from None
