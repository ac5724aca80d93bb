"""``adaptive_margin``: larger label margins on the classes where the teacher is unreliable.

Logit-adjusted cross entropy (Menon et al., ICLR 2021) with per-class margins taken from the
teacher's holdout reliability r_c (Lukasik et al., Teacher's pet), plus distillation:

    m_c  = tau * (1 - r_c) - prior_tau * log(pi_c)          pi_c: train class frequency
    loss = (1 - alpha) * CE(z - m, y) + alpha * T^2 * KL(softmax(t / T) || softmax(z / T))

CE(z - m, y) asks for z_y - z_c > m_y - m_c: a class the teacher gets wrong must win by more,
which pushes its logits up where the teacher would pull them down. ``prior_tau = 1`` with
``tau = 0`` is Menon's logit adjustment; zero counts are read as one for the log. Param
``label_loss`` applies a rebalanced label term to the margin-shifted logits
(``compression.losses.rebalance``); it and ``prior_tau`` both correct for the prior, so
only one of them may be on.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor

from compression.distributed import batch_mean
from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.core import kd_kl
from compression.losses.rebalance import (LABEL_PARAMS, LabelTerm, label_param_problems,
                                          label_term, per_example_ce)
from compression.reliability import reliability_values
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "param_problems", "class_margins", "adaptive_margin_loss", "build"]

PARAMS: dict[str, Any] = {"reliability": "accuracy", "tau": 1.0, "prior_tau": 0.0,
                          **LABEL_PARAMS}


def class_margins(reliability: Tensor, class_counts: Sequence[int], tau: float,
                  prior_tau: float = 0.0) -> Tensor:
    """reliability: [C] in [0, 1] -> m: [C] = tau * (1 - r) - prior_tau * log(pi)."""
    counts = torch.tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)  # [C]
    log_prior = (counts / counts.sum()).log()
    return (tau * (1 - reliability.double()) - prior_tau * log_prior).float()


def adaptive_margin_loss(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
                         margins: Tensor, alpha: float, temperature: float,
                         label: LabelTerm | None = None) -> Tensor:
    """student_logits, teacher_logits: [B, C]; labels: [B]; margins: [C] -> scalar.
    label: the per-example label term applied to ``z - m`` (None: CE)."""
    z = student_logits.float()
    ce = (label or per_example_ce)(z - margins.to(z.device), labels)  # [B]
    if alpha == 0:
        return batch_mean(ce)
    return batch_mean((1 - alpha) * ce + alpha * kd_kl(z, teacher_logits, temperature))


def param_problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with ``params`` (checked without data, e.g. when a job is submitted)."""
    problems = []
    if params["reliability"] not in ("accuracy", "prob"):
        problems.append(f"mitigation.params.reliability is {params['reliability']!r}; "
                        "use accuracy or prob")
    for key in ("tau", "prior_tau"):
        if not 0 <= params[key] <= 100:
            problems.append(f"mitigation.params.{key} is {params[key]}; it must be in [0, 100]")
    if params["prior_tau"] > 0 and params["label_loss"] != "ce":
        problems.append(f"mitigation.params.prior_tau is {params['prior_tau']} and label_loss "
                        f"is {params['label_loss']!r}: both adjust for the class prior; "
                        "keep one (prior_tau 0, or label_loss ce)")
    return problems + label_param_problems(params)


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Per-class margins from ``context.teacher_reliability`` (classes, shrunk)."""
    problems = param_problems(params)
    if problems:
        raise InvalidInput(problems, "invalid params for mitigation 'adaptive_margin'")
    r = torch.tensor(reliability_values(context.teacher_reliability, "classes",
                                        params["reliability"], count=context.num_classes))
    margins = class_margins(r, context.train_class_counts, params["tau"], params["prior_tau"])
    alpha, temperature = spec.alpha, spec.temperature
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])

    def adaptive_margin(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                        groups: Tensor) -> Tensor:
        return adaptive_margin_loss(student_logits, teacher_logits, labels, margins, alpha,
                                    temperature, label)

    return StatelessLoss("adaptive_margin", adaptive_margin, needs_teacher=True)
