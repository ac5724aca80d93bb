"""Per-example distillation losses, the building block of the subgroup-aware mitigations.

``kd_loss`` in ``core`` averages over the batch; mitigations that weight examples or groups
need the loss of each example before that average.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from compression.losses.core import kd_kl

__all__ = ["kd_per_example"]


def kd_per_example(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
                   alpha: float | Tensor, temperature: float) -> Tensor:
    """``(1 - alpha_i) * CE_i + alpha_i * T^2 * KL_i`` for each example.

    student_logits, teacher_logits: [B, C]; labels: [B] int64; alpha: a float or [B]
    -> [B]. A float alpha of 0 skips the teacher (which may then be None).
    """
    ce = F.cross_entropy(student_logits.float(), labels, reduction="none")  # [B]
    if isinstance(alpha, float | int) and alpha == 0:
        return ce
    if teacher_logits is None:
        raise ValueError("teacher_logits are needed when alpha > 0; got None")
    return (1 - alpha) * ce + alpha * kd_kl(student_logits, teacher_logits, temperature)
