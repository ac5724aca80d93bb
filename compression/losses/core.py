"""The two baseline objectives: one-hot cross entropy and standard knowledge distillation.

KD's label term is CE by default; param ``label_loss`` swaps in a rebalanced one
(``compression.losses.rebalance``).

Each objective is a pure function plus a ``build_*`` that binds it to a job's spec; the
registry lists the builders. Logits are upcast to float32 so bf16/fp16 students still get
stable log-softmaxes.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from compression.distributed import batch_mean
from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.rebalance import (LabelTerm, label_param_problems, label_term,
                                          per_example_ce)
from compression.spec import MitigationSpec

__all__ = ["cross_entropy", "kd_kl", "kd_loss", "build_one_hot", "build_kd"]


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross entropy over the (global) batch. student_logits: [B, C]; labels: [B] int64
    -> scalar."""
    return batch_mean(F.cross_entropy(student_logits.float(), labels, reduction="none"))


def kd_kl(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Per-example ``T^2 * KL(softmax(teacher/T) || softmax(student/T))``.

    student_logits, teacher_logits: [B, C] -> [B], each >= 0.
    The ``T^2`` keeps the gradient scale independent of ``T`` (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, C]
    p_teacher = F.softmax(teacher_logits.float() / temperature, dim=-1)  # [B, C]
    # Probabilities as target (not log-probs): kl_div then uses xlogy, so a teacher
    # probability of exactly 0 (a -inf logit, or underflow) contributes 0, not NaN.
    kl = F.kl_div(log_p_student, p_teacher, reduction="none").sum(dim=-1)  # [B]
    return temperature ** 2 * kl


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, alpha: float,
            temperature: float, label: LabelTerm | None = None) -> Tensor:
    """``(1 - alpha) * CE + alpha * T^2 * KL(teacher_T || student_T)``, global-batch mean.

    student_logits, teacher_logits: [B, C]; labels: [B] int64 -> scalar. label: the
    per-example label term in place of CE (None: CE).
    """
    ce = (label or per_example_ce)(student_logits, labels)  # [B]
    kl = kd_kl(student_logits, teacher_logits, temperature)  # [B]
    return batch_mean((1 - alpha) * ce + alpha * kl)


def build_one_hot(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Cross entropy on the labels only: the no-teacher baseline. alpha, T are ignored."""
    del spec, context, params

    def one_hot(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                groups: Tensor) -> Tensor:
        return cross_entropy(student_logits, labels)

    return StatelessLoss("one_hot", one_hot, needs_teacher=False)


def build_kd(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Standard KD with the spec's alpha and temperature, and the label term of ``params``."""
    problems = label_param_problems(params)
    if problems:
        raise InvalidInput(problems, "invalid params for mitigation 'kd'")
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])
    alpha, temperature = spec.alpha, spec.temperature

    def kd(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
           groups: Tensor) -> Tensor:
        return kd_loss(student_logits, teacher_logits, labels, alpha, temperature, label)

    return StatelessLoss("kd", kd, needs_teacher=True)
