"""Starting a student from trained weights (``student.init``).

The file is a safetensors file or a weights-only torch state dict, at a local path or a URI,
read through ``compression.access`` (allowed roots and prefixes, size limit) and never
unpickled as code (``compression.models.state``). It loads into the freshly built student
key by key. The classifier head is the one part allowed to differ: when the file's class
count is not the data's (or the file has no head, as a backbone saved without one), the head
keeps the fresh student's own initialisation, which the job draws from its seed. Any other
difference (a missing or extra key, another shape, a non-finite value) refuses the file with
every offending parameter named, and both shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Mapping

import torch
from torch import nn

from compression import access, storage
from compression.errors import InvalidInput
from compression.models.checkpoint import sha256_bytes
from compression.models.state import read_state_dict
from compression.models.timm_models import head_names
from compression.models.tv import SMALL_INPUT, TV_BUILDERS
from compression.report_sections import as_int, as_str, fields_of

__all__ = ["InitWeights", "StudentInit", "WHAT", "init_problem", "read_init", "apply_init",
           "head_keys", "stem_sizes"]

WHAT = "student.init"  # how errors name the file: the spec field to fix
_NOT_WEIGHTS = {".pt2": "a torch.export program", ".onnx": "an ONNX model",
                ".ts": "a TorchScript program", ".torchscript": "a TorchScript program"}
_SHOW = 8  # offending parameters an error lists
_TORCHVISION_STEM = max(SMALL_INPUT, 224)  # an image size that builds torchvision's stem


class _Shown(PurePosixPath):
    """A path or URI as written (credentials stripped), for messages; suffix from its name."""

    def __new__(cls, text: str) -> _Shown:
        shown = super().__new__(cls, text)
        shown._text = text
        return shown

    def __str__(self) -> str:
        return self._text


@dataclass(frozen=True)
class InitWeights:
    """A read ``student.init``: its source (credentials stripped), SHA-256 and tensors.
    stem_size: the image size to build a ``tv_*`` student's stem for (None: the student's
    own), when the file carries the other stem (``stem_sizes``)."""

    source: str
    sha256: str
    state: Mapping[str, torch.Tensor]
    stem_size: int | None = None


@dataclass(frozen=True)
class StudentInit:
    """The report's record of a student started from weights: where they came from, how
    many tensors were loaded, and which were freshly initialised instead, and why.
    stem_size: set when the student was built with the stem the file carries (``tv_*``
    archs: torchvision's own, as for inputs of this size), not its default one."""

    source: str
    sha256: str
    loaded: int
    replaced: tuple[str, ...] = ()
    reason: str = ""
    stem_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"source": self.source, "sha256": self.sha256, "loaded": self.loaded,
               "replaced": list(self.replaced), "reason": self.reason}
        return out if self.stem_size is None else {**out, "stem_size": self.stem_size}

    @classmethod
    def from_dict(cls, data: Any) -> StudentInit:
        d = fields_of(data, "student_init", ("source", "sha256", "loaded", "replaced", "reason"),
                      ("stem_size",))
        if not isinstance(d["replaced"], list):
            raise ValueError("student_init.replaced must be a list of parameter names")
        stem = d.get("stem_size")
        return cls(as_str(d["source"], "student_init.source"),
                   as_str(d["sha256"], "student_init.sha256"),
                   as_int(d["loaded"], "student_init.loaded"),
                   tuple(as_str(k, "student_init.replaced[]") for k in d["replaced"]),
                   as_str(d["reason"], "student_init.reason"),
                   None if stem is None else as_int(stem, "student_init.stem_size"))


def init_problem(path: str) -> str | None:
    """What is wrong with ``path`` as a ``student.init`` without reading it; None if nothing."""
    if storage.is_uri(path):
        try:
            storage.parse_uri(path, "URI")
        except InvalidInput as exc:
            return "; ".join(exc.problems)
    suffix = PurePosixPath(storage.redact(path)).suffix.lower()
    if suffix in _NOT_WEIGHTS:
        return (f"{storage.redact(path)!r:.200} looks like {_NOT_WEIGHTS[suffix]}; a student "
                "starts from weights only: a .safetensors file or a state dict saved with "
                "torch.save(model.state_dict(), ...)")
    return None


def read_init(path: str, policy: access.InputAccess | None = None) -> InitWeights:
    """Read ``path`` (local or URI) under ``policy`` (default: this process's) into tensors."""
    problem = init_problem(path)
    if problem:
        raise InvalidInput(f"{WHAT}: {problem}")
    data = access.read_input(access.local_or_uri(path), WHAT, policy)
    source = storage.redact(path)
    try:
        state = read_state_dict(data, _Shown(source))
    except InvalidInput as exc:
        raise InvalidInput(exc.problems, f"{WHAT}: {exc.context}" if exc.context
                           else WHAT) from exc
    return InitWeights(source, sha256_bytes(data), state)


def stem_sizes(arch: str) -> tuple[int | None, ...]:
    """Stems to try a file against, as image sizes to build ``arch`` for (None: the
    student's default). A ``tv_*`` file trained on full-size images (torchvision's own
    weights) carries torchvision's stem, which runs on any input of 32 px or more."""
    return (None, _TORCHVISION_STEM) if arch in TV_BUILDERS else (None,)


def head_keys(model: nn.Module, num_classes: int) -> tuple[str, ...]:
    """State-dict keys of the classifier head: timm's declared classifier, else the last
    linear layer with ``num_classes`` outputs."""
    names = head_names(model) or tuple(
        n for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and m.out_features == num_classes)[-1:]
    return tuple(k for k in model.state_dict() if any(k.startswith(f"{n}.") for n in names))


def apply_init(model: nn.Module, weights: InitWeights, num_classes: int,
               arch: str = "the student") -> StudentInit:
    """Load ``weights`` into ``model`` (built for ``num_classes``); the head keeps the model's
    own fresh weights when the file's class count differs or the file has none."""
    want = model.state_dict()
    state, head = weights.state, set(head_keys(model, num_classes))
    reason = _head_reason(want, state, head)
    replaced = tuple(k for k in want if k in head) if reason else ()
    problems = _mismatches(want, state, set(replaced), arch)
    if problems:
        raise InvalidInput(problems[:_SHOW] + ([f"... and {len(problems) - _SHOW} more"]
                                               if len(problems) > _SHOW else []),
                           f"{WHAT} {weights.source} does not fit {arch}")
    taken = [k for k in want if k not in replaced and k in state]
    model.load_state_dict({**want, **{k: state[k] for k in taken}}, strict=True)
    return StudentInit(weights.source, weights.sha256, len(taken), replaced, reason,
                       weights.stem_size)


def _head_reason(want: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                 head: set[str]) -> str:
    """Why the head is freshly initialised ('' when it loads from the file)."""
    if not head:
        return ""
    present = [k for k in head if k in state]
    if not present:
        return "the file has no classifier head"
    for k in sorted(present):
        got, need = state[k].shape, want[k].shape
        if len(got) == len(need) and got[1:] == need[1:] and got[:1] != need[:1]:
            return f"the file's head has {got[0]} classes; the data has {need[0]}"
    return ""


def _mismatches(want: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor],
                replaced: set[str], arch: str) -> list[str]:
    """Every difference outside the replaced head, each naming the parameter."""
    out = [f"unexpected parameter {k} {list(v.shape)}: {arch} has no such parameter"
           for k, v in state.items() if k not in want and k not in replaced]
    first_conv = next((k for k, v in want.items() if v.dim() == 4), None)
    for k, v in want.items():
        if k in replaced:
            continue
        if k not in state:
            if not k.endswith("num_batches_tracked"):  # a counter; older files lack it
                out.append(f"missing parameter {k}: {arch} needs shape {list(v.shape)}")
        elif state[k].shape != v.shape:
            out.append(f"parameter {k} has shape {list(state[k].shape)} in the file but "
                       f"{list(v.shape)} in {arch}{_hint(k, state[k], v, first_conv)}")
        elif state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            out.append(f"parameter {k} holds NaN or infinite values")
    return out


def _hint(key: str, got: torch.Tensor, need: torch.Tensor, first_conv: str | None) -> str:
    if key != first_conv or got.dim() != 4 or got.shape[0] != need.shape[0]:
        return ""
    if got.shape[1] != need.shape[1]:
        return (f" (the file's first layer takes {got.shape[1]}-channel images and the data "
                f"has {need.shape[1]}; set data.channels: {got.shape[1]} to convert them)")
    if got.shape[2:] != need.shape[2:]:
        return (f" (the file's first layer has {got.shape[2]}x{got.shape[3]} kernels: its stem "
                f"was built for another input size than this student's)")
    return ""
