"""The per-epoch training checkpoint: atomic writes, weights-only loads, a run fingerprint.

Everything stored is a tensor or plain data so that ``torch.load(weights_only=True)`` reads it:
loading never runs code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.spec import TrainingSpec, spec_to_dict

__all__ = ["CHECKPOINT_NAME", "run_fingerprint", "save_checkpoint", "load_checkpoint",
           "rng_state", "restore_rng"]

CHECKPOINT_NAME = "last.pt"
FORMAT = 1
# Settings that change speed or reporting, not the weights a run converges to: a stopped job
# may resume with other values (e.g. moved from a CPU box to a GPU one with device: auto).
_NOT_IDENTITY = ("device", "eval_batch_size", "progress_every_steps")


def run_fingerprint(spec: TrainingSpec, stage: str, data: Split, model: nn.Module,
                    extra: Mapping[str, Any] | None = None) -> str:
    """A hash of what makes a run: training settings, stage, data, model shapes, ``extra``."""
    settings = {k: v for k, v in spec_to_dict(spec).items() if k not in _NOT_IDENTITY}
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    head = {"format": FORMAT, "training": settings, "stage": stage, "model": shapes,
            "x_shape": list(data.x.shape), "extra": extra or {}}
    digest = hashlib.sha256(json.dumps(head, sort_keys=True, default=str).encode())
    for tensor in (data.y, data.group, _sample_rows(data.x)):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _sample_rows(x: torch.Tensor, rows: int = 256) -> torch.Tensor:
    """x: [N, ...] -> about ``rows`` evenly spaced samples: enough to tell datasets apart."""
    return x[::max(1, len(x) // rows)]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a reader sees the old file or the new one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise InvalidInput(f"cannot write checkpoint in {path.parent}: {exc.strerror}; "
                           "make the output dir writable or choose another") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise InvalidInput(f"cannot write checkpoint {path}: {exc.strerror}; "
                           "check the free space and permissions of the output dir") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (tensors on CPU), None when there is none.

    Raises ``InvalidInput`` when the file cannot be read or belongs to another run.
    """
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, foreign or not a torch file at all
        raise InvalidInput(f"checkpoint {path} cannot be read ({type(exc).__name__}); "
                           "delete it to start this run afresh") from exc
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        raise InvalidInput(f"checkpoint {path} belongs to another run (its training settings, "
                           "data or model differ from this one); delete it or use another "
                           "output dir")
    return state


def rng_state() -> dict[str, Any]:
    """The global CPU and CUDA generator states (dropout and other model randomness)."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    # CUDA states only replay on the same number of GPUs; elsewhere the seed's stream is kept.
    if state["cuda"] and torch.cuda.is_available() and \
            len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
