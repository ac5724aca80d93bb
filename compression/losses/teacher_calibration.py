"""``teacher_calibration``: standard KD from a teacher calibrated per class on holdout.

Wang et al. (UAI 2023) show that the per-class calibration of the teacher's scores is what a
robust student needs. The calibration itself (``compression.calibration``) happens in the
pipeline before training, because it wraps the teacher rather than the loss; this objective's
registry entry is marked ``calibrates_teacher`` so the pipeline knows to do it. The loss is
then ``kd_loss`` on the calibrated teacher's logits.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.core import kd_loss
from compression.spec import MitigationSpec

__all__ = ["build"]


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """KD with the spec's alpha and temperature; the teacher it sees is the calibrated one."""
    del context, params
    alpha, temperature = spec.alpha, spec.temperature

    def teacher_calibration(student_logits: Tensor, labels: Tensor,
                            teacher_logits: Tensor | None, groups: Tensor) -> Tensor:
        return kd_loss(student_logits, teacher_logits, labels, alpha, temperature)

    return StatelessLoss("teacher_calibration", teacher_calibration, needs_teacher=True)
