"""Loading a teacher checkpoint (torch.export, TorchScript, ONNX or weights) as a callable.

A teacher file is untrusted: it is read once through the access policy, checked as bytes,
and the loader gets exactly those bytes (zips rebuilt from their checked entries), so no
second read can see another file. An exported program must be built-in operators only
(``program_check``); TorchScript, which is code, loads only where the operator allows it;
ONNX comes with its external data inlined (``onnx_check``); weights never unpickle code.

Every load ends with a probe: a batch of zeros must give finite logits [2, num_classes], so a
teacher for other data fails here, naming the file, rather than midway through training.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from compression import access
from compression.errors import InvalidInput
from compression.models.archive import read_archive
from compression.models.checkpoint import resolve_format, sha256_bytes, sniff
from compression.models.export_archive import check_export_archive
from compression.models.onnx_check import vetted_onnx
from compression.models.onnx_runner import OnnxRunner
from compression.models.program_check import check_graph
from compression.models.safe_load import torchscript_refused
from compression.models.state import model_from_state, read_state_dict
from compression.spec import TeacherSpec

__all__ = ["Teacher", "load_teacher"]

_WHAT = "teacher.path"  # how access errors name the file: the spec field to fix
_PROBE_BATCH = 2  # > 1, so a program exported with a fixed batch of 1 is caught
_CONTENT_NAMES = {"export": "torch.export program (.pt2)", "torchscript": "TorchScript archive",
                  "safetensors": "safetensors weights file", "pickle": "torch.save file"}
_CONTENT_FITS = {"export": {"export"}, "torchscript": {"torchscript"}, "onnx": {"unknown"},
                 "weights": {"pickle", "safetensors"}}


class Teacher:
    """A frozen classifier: ``teacher(x)`` maps x: [B, C, H, W] float to logits [B, K].

    Runs without gradients in eval mode; returns float32 on x's device whatever device or
    runtime computes it. ``module`` is the torch module (None for ONNX).
    """

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor], *, format: str, path: str,
                 sha256: str, device: torch.device, module: nn.Module | None = None):
        self._run = run
        self.format = format
        self.path = path
        self.sha256 = sha256
        self.device = device  # where ``run`` wants its input
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> logits [B, K] float32 on x.device."""
        with torch.no_grad():  # not inference_mode: its tensors cannot enter a KD loss graph
            # contiguous: a loaded graph may view activations as laid out when exported
            out = self._run(x.to(self.device, torch.float32).contiguous())
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the model returned a {type(out).__name__}, not a logits tensor")
        return out.to(x.device, torch.float32)

    def __repr__(self) -> str:
        return f"Teacher(format={self.format!r}, path={self.path!r}, sha256={self.sha256[:12]})"


def _load_export(data: bytes, path: Path, spec: TeacherSpec, input_shape: tuple[int, int, int],
                 num_classes: int, device: torch.device) -> Teacher:
    archive = read_archive(data, path, "torch.export archive")
    check_export_archive(archive)  # the program's JSON, before torch parses any of it
    try:
        program = torch.export.load(io.BytesIO(archive.rebuilt()))
    except Exception as exc:  # corrupt or foreign archives raise assorted types
        raise InvalidInput(f"{path} is not a loadable torch.export program: {exc}") from None
    check_graph(program, path)  # what torch built, before .module() compiles any of it
    try:
        module = program.module()
    except Exception as exc:  # the graph does not make a module in this torch
        raise InvalidInput(f"{path} is not a runnable torch.export program: {exc}") from None
    # the program was captured in eval mode (save_exported does so); .eval() is unsupported
    return _teacher(module.to(device), "export", path, device)


def _load_torchscript(data: bytes, path: Path, spec: TeacherSpec,
                      input_shape: tuple[int, int, int], num_classes: int,
                      device: torch.device) -> Teacher:
    if not access.current().allow_torchscript:  # whatever the content: the format is code
        raise torchscript_refused(path)
    archive = read_archive(data, path, "TorchScript archive")
    try:
        with warnings.catch_warnings():  # the operator chose TorchScript; its deprecation is noise
            warnings.filterwarnings("ignore", message=".*torch.jit.load", category=FutureWarning)
            module = torch.jit.load(io.BytesIO(archive.rebuilt()), map_location=device)
    except Exception as exc:  # torch.jit raises RuntimeError and friends
        raise InvalidInput(f"{path} is not a loadable TorchScript archive: {exc}") from None
    return _teacher(module.eval(), "torchscript", path, device)


def _load_weights(data: bytes, path: Path, spec: TeacherSpec, input_shape: tuple[int, int, int],
                  num_classes: int, device: torch.device) -> Teacher:
    state = read_state_dict(data, path)
    if not spec.arch:
        raise InvalidInput(f"{path} holds weights only; set teacher.arch (and teacher.width) "
                           "to the architecture they belong to, e.g. arch: resnet20")
    model = model_from_state(state, path, spec.arch, spec.width, input_shape, num_classes)
    return _teacher(model.to(device).eval(), "weights", path, device)


def _load_onnx(data: bytes, path: Path, spec: TeacherSpec, input_shape: tuple[int, int, int],
               num_classes: int, device: torch.device) -> Teacher:
    runner = OnnxRunner(path, input_shape, device, model=vetted_onnx(data, path))
    return Teacher(runner, format="onnx", path=str(path), sha256="", device=torch.device("cpu"))


def _teacher(module: nn.Module, fmt: str, path: Path, device: torch.device) -> Teacher:
    for p in module.parameters():
        p.requires_grad_(False)
    return Teacher(module, format=fmt, path=str(path), sha256="", device=device, module=module)


_LOADERS = {"export": _load_export, "torchscript": _load_torchscript, "onnx": _load_onnx,
            "weights": _load_weights}


def _check_content(data: bytes, path: Path, fmt: str, content: str) -> None:
    """Refuse a declared format the file's bytes contradict, saying what the file is."""
    if content in _CONTENT_FITS[fmt] or (content == "unknown" and fmt != "onnx"):
        return
    if content == "pickle":
        read_state_dict(data, path)  # refuses pickled code with its own message
        raise InvalidInput(f"teacher.format is {fmt!r} but {path} is a torch.save state dict; "
                           "set teacher.format to weights and teacher.arch")
    right = "weights" if content == "safetensors" else content
    raise InvalidInput(f"teacher.format is {fmt!r} but {path} is a {_CONTENT_NAMES[content]}; "
                       f"set teacher.format to {right} (or auto)")


def _probe(teacher: Teacher, input_shape: tuple[int, int, int], num_classes: int) -> None:
    shape = [_PROBE_BATCH, *input_shape]
    try:
        out = teacher(torch.zeros(shape))
    except Exception as exc:  # any failure here means the model does not fit this data
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidInput(f"{teacher.path} fails on a float32 batch of zeros {shape} (the "
                           f"data's [B, C, H, W]): {first}") from None
    if list(out.shape) != [_PROBE_BATCH, num_classes]:
        raise InvalidInput(f"{teacher.path} outputs {list(out.shape)} for input {shape}; expected "
                           f"logits [{_PROBE_BATCH}, {num_classes}] (one per class of the data)")
    if not torch.isfinite(out).all():
        raise InvalidInput(f"{teacher.path} outputs non-finite logits for a batch of zeros")


def load_teacher(spec: TeacherSpec, input_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu") -> Teacher:
    """Load ``spec.path`` for inputs [B, *input_shape] and ``num_classes`` outputs, checked."""
    if len(input_shape) != 3 or min(input_shape) < 1 or num_classes < 1:
        raise InvalidInput(f"input_shape {tuple(input_shape)} must be (C, H, W) and "
                           f"num_classes {num_classes} >= 1")
    path = Path(spec.path)
    try:
        # spec.path, not path: a Path would fold the '//' of an object URI
        data = access.read_input(spec.path, _WHAT)  # once: every check and the loader see these
        content = sniff(data)
        if content == "torchscript" and not access.current().allow_torchscript:
            raise torchscript_refused(path)  # by content: a .pt2 or .pth name changes nothing
        fmt = resolve_format(path, spec.format, content)
        _check_content(data, path, fmt, content)
        teacher = _LOADERS[fmt](data, path, spec, tuple(input_shape), num_classes,
                                torch.device(device))
        teacher.sha256 = sha256_bytes(data)
        _probe(teacher, tuple(input_shape), num_classes)
    except InvalidInput as exc:
        if exc.context != "invalid input":  # already says which check failed
            raise
        raise InvalidInput(exc.problems, "cannot load teacher checkpoint") from None
    return teacher
