"""Where training runs and with which mixed precision.

AMP applies on CUDA only: on CPU, training is plain fp32 so that a seed gives bit-identical
weights run after run. channels_last (a memory layout, not a precision) applies on both: on
CPU it took distillation with cached teacher logits from 2.34x to 3.09x torchdistill's
throughput (`bench/distill_throughput.py`, docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import resource
import sys
from typing import ContextManager

import torch

from compression.errors import InvalidInput

__all__ = ["resolve_device", "amp_dtype", "autocast", "to_inputs", "PeakMemory"]


def resolve_device(spec_device: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; ``cuda`` without a GPU is an input error."""
    if spec_device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec_device == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInput(f"training.device is 'cuda' but torch {torch.__version__} sees no "
                               "CUDA GPU here; use device: auto or cpu")
        return torch.device("cuda")
    if spec_device == "cpu":
        return torch.device("cpu")
    raise InvalidInput(f"training.device {spec_device!r} is not one of auto, cpu, cuda")


def amp_dtype(spec_amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``training.amp`` on ``device``; None means full fp32.

    ``auto`` picks bf16 where the GPU supports it and fp16 (with a GradScaler) elsewhere.
    """
    if device.type != "cuda" or spec_amp == "off":
        return None
    bf16_ok = torch.cuda.is_bf16_supported()
    if spec_amp == "bf16" and not bf16_ok:
        raise InvalidInput(f"training.amp is 'bf16' but {torch.cuda.get_device_name(device)} "
                           "does not support bfloat16; use amp: auto, fp16 or off")
    if spec_amp == "fp16" or (spec_amp == "auto" and not bf16_ok):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_inputs(x: torch.Tensor) -> torch.Tensor:
    """x: [B, C, H, W] uint8 -> [B, C, H, W] float32 in [0, 1], the models' input."""
    return x.float().div_(255)


class PeakMemory:
    """Peak memory of a stretch of training.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the growth of the process's
    peak resident set (``getrusage`` ru_maxrss). That peak is a high-water mark for the whole
    process, so the delta is 0 when training stays below an earlier peak (e.g. data loading).
    """

    def __init__(self, device: torch.device):
        self.device = device
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        self.start = _peak_rss_bytes()

    def bytes(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        return max(0, _peak_rss_bytes() - self.start)


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB
