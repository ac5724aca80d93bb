"""Teacher logits for training: computed once and cached, or computed online per batch.

Without augmentation the teacher sees the same inputs every epoch, so one pass over the split
replaces ``epochs`` passes. The cache stores float16: 11 significant bits give a relative error
below 2**-11 (about 4.9e-4, under 1e-3) against the fp32 logits, far below the noise that
distillation already tolerates (a temperature of 2-8 divides logit gaps further), for half the
memory. Logits beyond float16's range (|z| > 65504) are kept in float32 rather than turned to inf.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch import nn

from compression.errors import Cancelled, StageFailed
from compression.events import Event, EventSink, StopCheck, emit_nothing, never_stop
from compression.training.device import autocast, to_inputs

__all__ = ["TeacherCall", "prepare_teacher", "teacher_logits", "TeacherCache"]

TeacherCall = Callable[[torch.Tensor], torch.Tensor]


def prepare_teacher(teacher: TeacherCall, device: torch.device,
                    channels_last: bool = False) -> TeacherCall:
    """An ``nn.Module`` teacher goes to ``device`` in eval mode (and the channels_last layout);
    other callables, such as loaded checkpoints, are used as they are."""
    if isinstance(teacher, nn.Module):
        teacher.to(device).eval()
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
    return teacher


def teacher_logits(teacher: TeacherCall, inputs: torch.Tensor, stage: str,
                   amp: torch.dtype | None = None) -> torch.Tensor:
    """inputs: [B, C, H, W] float -> logits [B, K] float32, a normal tensor autograd can save."""
    with torch.inference_mode(), autocast(inputs.device, amp):
        logits = teacher(inputs)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(inputs):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise StageFailed(stage, f"the teacher returned {shape} for {len(inputs)} inputs; "
                                 "it must return logits [batch, num_classes]")
    # A copy made outside inference mode: inference tensors cannot be saved for backward.
    return logits.to(device=inputs.device, dtype=torch.float32, copy=True)


class TeacherCache:
    """logits: [N, K] teacher logits of a split, in split order, on the training device."""

    def __init__(self, logits: torch.Tensor, seconds: float = 0.0):
        self.logits = logits
        self.seconds = seconds

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [B] sample indices on the cache's device -> [B, K] float32."""
        return self.logits[idx].float()

    @classmethod
    def build(cls, teacher: TeacherCall, x: torch.Tensor, *, batch_size: int, device: torch.device,
              amp: torch.dtype | None = None, stage: str = "distill",
              on_event: EventSink = emit_nothing, should_stop: StopCheck = never_stop,
              progress_every: int = 20, channels_last: bool = False) -> "TeacherCache":
        """Run ``teacher`` once over x: [N, C, H, W] uint8, in order, ``batch_size`` at a time.

        Emits ``progress`` events with ``phase: teacher_cache`` every ``progress_every``
        batches and at the end; raises ``Cancelled`` when ``should_stop()`` turns True.
        """
        start, n = time.perf_counter(), len(x)
        steps = -(-n // batch_size)
        chunks = []
        for step in range(steps):
            if should_stop():
                raise Cancelled(f"{stage}: cancelled while caching teacher logits")
            batch = to_inputs(x[step * batch_size:(step + 1) * batch_size].to(
                device, non_blocking=True))
            if channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            chunks.append(teacher_logits(teacher, batch, stage, amp))
            if (step + 1) % progress_every == 0 or step + 1 == steps:
                done = min(n, (step + 1) * batch_size)
                on_event(Event("progress", stage, {
                    "phase": "teacher_cache", "step": step + 1, "steps": steps,
                    "samples": done, "samples_per_s": done / _elapsed(start)}))
        logits = torch.cat(chunks)  # [N, K] float32
        if logits.isfinite().all() and logits.abs().max() <= torch.finfo(torch.float16).max:
            logits = logits.half()
        return cls(logits, time.perf_counter() - start)


def _elapsed(start: float) -> float:
    return max(time.perf_counter() - start, 1e-9)
