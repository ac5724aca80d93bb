"""Reading weights files safely and loading them strictly into a zoo architecture.

Nothing here unpickles code: ``.pth``/``.pt`` files go through ``safe_load.load_weights_only``.
Both kinds are read from bytes already read, and every malformed file is an ``InvalidInput``
naming it: a truncated file, a wrong or oversized header, an empty file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from torch import nn

from compression.errors import InvalidInput
from compression.models.safe_load import load_weights_only
from compression.models.tv import SMALL_INPUT, TV_BUILDERS
from compression.models.zoo import DEFAULT_IMAGE_SIZE, build_model, known_archs

__all__ = ["is_safetensors", "read_state_dict", "model_from_state"]

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # trainer checkpoints nest weights
_SHOW = 5  # how many offending keys an error lists


def is_safetensors(data: bytes) -> bool:
    """A safetensors file starts with a little-endian u64 header size, then a JSON object."""
    return len(data) >= 9 and data[8:9] == b"{"


def _safetensors_problem(data: bytes) -> str | None:
    """What is wrong with the framing of a safetensors file, checked before parsing it."""
    if not data:
        return "is empty"
    if len(data) < 8:
        return f"holds {len(data)} bytes, too few for the 8-byte header length"
    declared = int.from_bytes(data[:8], "little")
    if declared > len(data) - 8:
        return (f"declares a {declared}-byte header but only {len(data) - 8} bytes follow "
                "(truncated, or not a safetensors file)")
    try:
        header = json.loads(data[8:8 + declared])
    except (ValueError, RecursionError):
        return "has a header that is not JSON"
    if not isinstance(header, dict):
        return "has a header that is not a JSON object"
    return None


def _read_safetensors(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    problem = _safetensors_problem(data)
    if problem:
        raise InvalidInput(f"{path} is not a readable safetensors file: it {problem}")
    try:
        return safetensors_load(data)  # from memory: the bytes that were checked
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a readable safetensors file: {exc}") from None


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InvalidInput(f"{path} holds a {type(obj).__name__}, not a state dict "
                           "(a mapping of parameter names to tensors)")
    bad = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise InvalidInput(f"{path}: entries {bad[:_SHOW]} are not tensors; save "
                           "model.state_dict() only")
    state = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_state_dict(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a weights-only torch state dict (``data``, read from
    ``path``), on CPU. A ``.safetensors`` name is held to that format, whatever the bytes."""
    if is_safetensors(data) or path.suffix.lower() == ".safetensors":
        return _read_safetensors(data, path)
    return _unwrap(load_weights_only(data, path), path)


def _mismatches(model: nn.Module, state: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable differences between a model's state dict and ``state``; empty if none."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    sizes = [f"{k}: file {list(state[k].shape)} vs model {list(v.shape)}"
             for k, v in want.items() if k in state and state[k].shape != v.shape]
    out = []
    if missing:
        out.append(f"{len(missing)} missing keys, e.g. {missing[:_SHOW]}")
    if unexpected:
        out.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[:_SHOW]}")
    if sizes:
        out.append(f"{len(sizes)} shape mismatches, e.g. {sizes[:_SHOW]}")
    return out


def _fits(arch: str, width: float, state: Mapping[str, torch.Tensor], in_channels: int,
          num_classes: int, image_size: int) -> bool:
    try:
        with torch.device("meta"):  # shapes only: no memory, no init cost
            model = build_model(arch, in_channels, num_classes, width, image_size=image_size)
    except InvalidInput:
        return False
    return not _mismatches(model, state)


def _suggest(state: Mapping[str, torch.Tensor], in_channels: int, num_classes: int,
             image_size: int) -> str:
    """'arch X, width W' of the zoo model this state dict fits, or '' when none does."""
    for arch in known_archs():
        with torch.device("meta"):
            ref = build_model(arch, in_channels, num_classes, image_size=image_size)
        if set(ref.state_dict()) != set(state):
            continue
        first = next(k for k, v in ref.state_dict().items() if v.dim() == 4)
        width = round(state[first].shape[0] / ref.state_dict()[first].shape[0], 4)
        if _fits(arch, width, state, in_channels, num_classes, image_size):
            return f"arch {arch}, width {width:g}"
        return f"arch {arch} (at no width tried; the class or channel count may differ)"
    return ""


def model_from_state(state: Mapping[str, torch.Tensor], path: Path, arch: str, width: float,
                     input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """``arch`` built for ``input_shape`` with ``state`` loaded; every key and shape must match.

    A ``tv_*`` arch is also tried with its other stem, since a checkpoint trained at another
    image size carries that stem (both run on any input of 32 px or more).
    """
    c, h, w = input_shape
    sizes = [min(h, w)]
    if arch in TV_BUILDERS:
        sizes.append(DEFAULT_IMAGE_SIZE if min(h, w) >= SMALL_INPUT else 224)
    problems: list[str] = []
    for size in sizes:
        model = build_model(arch, c, num_classes, width, image_size=size)
        found = _mismatches(model, state)
        if not found:
            model.load_state_dict(state, strict=True)
            return model
        problems = problems or found
    hint = _suggest(state, c, num_classes, min(h, w))
    problems.append(f"it looks like {hint}; set teacher.arch/width to match" if hint else
                    f"it does not match any zoo arch ({', '.join(known_archs())}) built for "
                    f"{c} channels and {num_classes} classes")
    raise InvalidInput(problems, f"{path} does not fit arch {arch} at width {width:g}")
