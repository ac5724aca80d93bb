"""``adaptive_alpha``: trust the teacher less on the subgroups where it is less reliable.

Lukasik et al. (Teacher's pet, TMLR 2022): distillation hurts the subgroups where the teacher
errs, so the mixing weight is made per subgroup, from the teacher's holdout reliability r_g:

    alpha_g = alpha * (r_g / max_h r_h) ** sharpness

With equal reliability everywhere every alpha_g is alpha, i.e. plain KD. Optionally each
example is also gated on the teacher being right on it: an example whose teacher margin
(p_teacher(true) - max other p_teacher, at temperature 1) is not above ``margin`` gets
``alpha_i = gate * alpha_g``. Loss: mean_i [(1 - alpha_i) * CE_i + alpha_i * T^2 * KL_i],
CE_i being the label term of param ``label_loss`` (``compression.losses.rebalance``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from compression.distributed import batch_mean
from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.per_example import kd_per_example
from compression.losses.rebalance import (LABEL_PARAMS, LabelTerm, label_param_problems,
                                          label_term)
from compression.reliability import reliability_values
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "param_problems", "group_alphas", "teacher_margin", "adaptive_alpha_loss",
           "build"]

PARAMS: dict[str, Any] = {"reliability": "accuracy", "sharpness": 1.0, "per_example": False,
                          "margin": 0.0, "gate": 0.5, **LABEL_PARAMS}


def group_alphas(alpha: float, reliability: Tensor, sharpness: float = 1.0) -> Tensor:
    """reliability: [K] in [0, 1] -> alpha_g: [K] = alpha * (r_g / max r) ** sharpness.

    All-zero reliability counts as equal reliability: every alpha_g is alpha.
    """
    top = reliability.max()
    if top <= 0:
        return torch.full_like(reliability, alpha)
    return alpha * (reliability / top) ** sharpness


def teacher_margin(teacher_logits: Tensor, labels: Tensor) -> Tensor:
    """p(true) - max_{c != true} p(c) under softmax(teacher_logits): [B, C] -> [B] in [-1, 1]."""
    probs = teacher_logits.float().softmax(dim=-1)  # [B, C]
    true_p = probs.gather(1, labels[:, None]).squeeze(1)  # [B]
    other = probs.scatter(1, labels[:, None], -1.0).max(dim=1).values  # [B]
    return true_p - other


def adaptive_alpha_loss(student_logits: Tensor, teacher_logits: Tensor | None, labels: Tensor,
                        groups: Tensor, alpha_by_group: Tensor, temperature: float, *,
                        margin: float | None = None, gate: float = 1.0,
                        label: LabelTerm | None = None) -> Tensor:
    """Batch mean of the per-example KD loss with alpha_i = alpha_by_group[groups_i].

    student_logits, teacher_logits: [B, C]; labels, groups: [B] int64; alpha_by_group: [K].
    margin: None turns the per-example gate off; otherwise examples with teacher margin
    <= margin get alpha_i * gate. label: the per-example label term (None: CE).
    """
    alpha = alpha_by_group.to(student_logits.device, torch.float32)[groups]  # [B]
    if margin is not None and teacher_logits is not None:
        trusted = teacher_margin(teacher_logits, labels) > margin  # [B] bool
        alpha = torch.where(trusted, alpha, alpha * gate)
    return batch_mean(kd_per_example(student_logits, teacher_logits, labels, alpha, temperature,
                                     label))


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Per-subgroup alphas from ``context.teacher_reliability`` (groups, shrunk)."""
    _raise_problems(params)
    measure = "accuracy" if params["reliability"] == "accuracy" else "prob"
    r = torch.tensor(reliability_values(context.teacher_reliability, "groups", measure,
                                        names=context.group_names))  # [K]
    alpha_by_group = group_alphas(spec.alpha, r, params["sharpness"])
    margin = params["margin"] if params["per_example"] else None
    gate, temperature = params["gate"], spec.temperature
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])

    def adaptive_alpha(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                       groups: Tensor) -> Tensor:
        return adaptive_alpha_loss(student_logits, teacher_logits, labels, groups,
                                   alpha_by_group, temperature, margin=margin, gate=gate,
                                   label=label)

    return StatelessLoss("adaptive_alpha", adaptive_alpha, needs_teacher=True)


def param_problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with ``params`` (checked without data, e.g. when a job is submitted)."""
    problems = []
    if params["reliability"] not in ("accuracy", "prob"):
        problems.append(f"reliability is {params['reliability']!r}; use accuracy or prob")
    if params["sharpness"] < 0:
        problems.append(f"sharpness is {params['sharpness']}; it must be >= 0")
    if not 0 <= params["gate"] <= 1:
        problems.append(f"gate is {params['gate']}; it must be in [0, 1]")
    if not -1 <= params["margin"] < 1:
        problems.append(f"margin is {params['margin']}; it is a probability gap in [-1, 1)")
    if params["sharpness"] > 100:
        problems.append(f"sharpness is {params['sharpness']}; it must be at most 100")
    return [f"mitigation.params.{p}" for p in problems] + label_param_problems(params)


def _raise_problems(params: dict[str, Any]) -> None:
    problems = param_problems(params)
    if problems:
        raise InvalidInput(problems, "invalid params for mitigation 'adaptive_alpha'")
