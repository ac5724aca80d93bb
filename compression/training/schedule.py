"""Optimizer and per-step learning-rate schedule built from a ``TrainingSpec``."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from compression.errors import InvalidInput
from compression.spec import TrainingSpec

__all__ = ["steps_per_epoch", "batch_bounds", "lr_factor", "build_optimizer", "build_scheduler"]


def steps_per_epoch(n: int, batch_size: int, min_last: int = 2) -> int:
    """Optimizer steps per epoch; the last partial batch is kept (see ``batch_bounds``) unless
    it holds fewer than ``min_last`` samples: then it joins the previous batch. BatchNorm
    cannot train on a batch of one, nor a rank on a share of one (2 per rank under DDP)."""
    steps = -(-n // batch_size)
    return steps - 1 if steps > 1 and 0 < n % batch_size < min_last else steps


def batch_bounds(step: int, n: int, batch_size: int, min_last: int = 2) -> tuple[int, int]:
    """[start, end) of batch ``step`` (0-based) within an epoch of ``n`` samples."""
    start = step * batch_size
    last = step == steps_per_epoch(n, batch_size, min_last) - 1
    return start, n if last else start + batch_size


def lr_factor(spec: TrainingSpec, steps: int) -> Callable[[int], float]:
    """The multiplier of ``spec.lr`` used at optimizer step ``i`` (0-based, global).

    ``steps``: optimizer steps per epoch. Linear warm-up over ``warmup_epochs`` (1/W, 2/W,
    ..., 1 for W warm-up steps), then: cosine from 1 towards 0 at the end of the last epoch;
    step (times ``step_gamma`` from each epoch in ``step_milestones`` on); or constant.
    """
    warmup = spec.warmup_epochs * steps
    total = spec.epochs * steps
    milestones = [m * steps for m in spec.step_milestones]

    def factor(i: int) -> float:
        warm = (i + 1) / warmup if i < warmup else 1.0
        if spec.schedule == "cosine":
            if i < warmup:
                return warm
            progress = (i - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if spec.schedule == "step":
            return warm * spec.step_gamma ** sum(i >= m for m in milestones)
        return warm

    return factor


def build_optimizer(model: nn.Module, spec: TrainingSpec) -> torch.optim.Optimizer:
    """SGD (momentum, no Nesterov) or AdamW, weight decay on every parameter."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InvalidInput("the model to train has no trainable parameters")
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay, nesterov=False)
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    raise InvalidInput(f"training.optimizer {spec.optimizer!r} is not one of sgd, adamw")


def build_scheduler(optimizer: torch.optim.Optimizer, spec: TrainingSpec,
                    steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step; ``steps``: optimizer steps per epoch."""
    if spec.schedule not in ("cosine", "step", "constant"):
        raise InvalidInput(f"training.schedule {spec.schedule!r} is not one of "
                           "cosine, step, constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(spec, steps))
