"""Per-example distillation losses, the building block of the subgroup-aware mitigations.

``kd_loss`` in ``core`` averages over the batch; mitigations that weight examples or groups
need the loss of each example before that average.
"""

from __future__ import annotations

from torch import Tensor

from compression.losses.core import kd_kl
from compression.losses.rebalance import LabelTerm, per_example_ce

__all__ = ["kd_per_example"]


def kd_per_example(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
                   alpha: float | Tensor, temperature: float,
                   label: LabelTerm | None = None) -> Tensor:
    """``(1 - alpha_i) * CE_i + alpha_i * T^2 * KL_i`` for each example.

    student_logits, teacher_logits: [B, C]; labels: [B] int64; alpha: a float or [B]
    -> [B]. A float alpha of 0 skips the teacher (which may then be None). label: the
    per-example label term in place of CE (None: CE).
    """
    ce = (label or per_example_ce)(student_logits, labels)  # [B]
    if isinstance(alpha, float | int) and alpha == 0:
        return ce
    if teacher_logits is None:
        raise ValueError("teacher_logits are needed when alpha > 0; got None")
    return (1 - alpha) * ce + alpha * kd_kl(student_logits, teacher_logits, temperature)
