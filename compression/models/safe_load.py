"""``torch.load`` for files nobody vouched for: weights come back, pickled code is refused.

``torch.load(weights_only=True)`` rebuilds only tensors and plain containers; anything else
(a whole nn.Module, a function) stops it before any code runs. This module turns its errors
into messages that say what the file is and how to re-save it, and never suggests
``weights_only=False``. Everything works on bytes already read (``compression.access``), so
what was checked is what is loaded.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import re
import warnings
from pathlib import Path

import torch

from compression.errors import InvalidInput
from compression.models.archive import is_zip, read_archive

__all__ = ["PICKLED_CODE_HELP", "TORCHSCRIPT_HELP", "load_weights_only", "imported_names",
           "pickle_stream", "embedded_code", "torchscript_refused"]

PICKLED_CODE_HELP = (
    "re-save the model from the code that defines it, either as an exported program: "
    "torch.export.save(torch.export.export(model.eval(), (example,)), 'teacher.pt2'), "
    "or as weights: safetensors.torch.save_file(model.state_dict(), 'teacher.safetensors') "
    "and set teacher.arch (and teacher.width) to its zoo architecture")
TORCHSCRIPT_HELP = (
    "TorchScript is a program whose code runs when the teacher is called and may read or "
    "write files, so it loads only where the operator allows TorchScript teachers (server "
    "config allow_torchscript_teachers: true; in Python, "
    "compression.access.InputAccess(allow_torchscript=True))")
_STATE_DICT_MODULES = ("torch.", "collections.OrderedDict")  # what torch.save(state) imports


def imported_names(data: bytes) -> list[str]:
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


def pickle_stream(data: bytes) -> bytes:
    """The pickle of a torch.save file: its data.pkl when it is a zip, else the file itself."""
    if not is_zip(data):
        return data
    archive = read_archive(data, Path("<torch.save file>"), "torch.save file")
    found = [v for k, v in archive.entries.items() if k == "data.pkl"]
    return found[0] if found else b""


def _imports_code(data: bytes) -> bool:
    """Whether the file's pickles import anything beyond what a state dict needs."""
    try:
        names = imported_names(pickle_stream(data))
    except InvalidInput:
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


def torchscript_refused(path: Path) -> InvalidInput:
    return InvalidInput(
        f"{path} is a TorchScript archive and is not loaded: {TORCHSCRIPT_HELP}. Without "
        f"that, {PICKLED_CODE_HELP}", "TorchScript teacher not allowed")


def load_weights_only(data: bytes, path: Path) -> object:
    """What ``torch.save`` wrote (``data``, read from ``path``), on CPU, if it is made of
    tensors and containers. A zip is rebuilt from its checked entries first."""
    if is_zip(data):
        data = read_archive(data, path, "torch weights file").rebuilt()
    try:
        with warnings.catch_warnings():  # protocol notices: failures are reported below
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # "Unsupported global": a class or function; other failures (e.g. a raw
        # protocol-4 pickle) still count as code when the stream imports anything
        if "Unsupported global" in str(exc) or _imports_code(data):
            raise _refusal(path, exc) from None
        raise _unreadable(path, exc) from None
    except RuntimeError as exc:
        if "TorchScript" in str(exc):
            raise InvalidInput(f"{path} is a TorchScript archive, not a weights file; "
                               f"{TORCHSCRIPT_HELP}") from None
        raise _unreadable(path, exc) from None
    except (EOFError, OSError, ValueError, TypeError, KeyError) as exc:
        raise _unreadable(path, exc) from None


def embedded_code(path: Path, member: str) -> InvalidInput:
    return InvalidInput(
        f"{path} embeds code or pickled Python objects in {member}, which torch.export.load "
        f"would run; it is never loaded. To use it, {PICKLED_CODE_HELP}",
        "unsafe teacher checkpoint")
