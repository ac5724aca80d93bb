"""``paired_alpha`` and ``paired_dro``: the teacher's weight per subgroup from measured harm.

``compression.losses.harm_probe`` compares a short distilled student with a short student
trained on the label term alone, paired and cross-fitted, and gives each subgroup g a weight
w_g in [0, 1], the posterior probability that distillation is at least as good there. Then

    paired_alpha:  loss = mean_i [(1 - alpha_i) * CE_i + alpha_i * T^2 * KL_i]
    paired_dro:    the group_dro objective with the same per-example loss
                   alpha_i = alpha * w_{g_i}

so a subgroup where the teacher is not shown to do no harm falls back toward the label term,
however accurate the teacher is there. CE_i is the label term of param ``label_loss``.

With ``match_share`` (paired_alpha) example i's loss is weighted by
``v_i = 1 + (r - 1) * (1 - alpha_i / alpha)``, r the batch's mean |d loss_i / d logits| over
mean |d CE_i / d logits| on the examples that keep some teacher: the examples the teacher was
taken from keep the share of the update they have in label-only training (our own;
docs/mitigations.md). With ``reference_floor`` (paired_alpha) each subgroup's examples are
weighted by a multiplier that rises while its holdout accuracy falls behind the label-only
reference's (``compression.losses.reference_floor``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from compression.distributed import batch_mean

from compression.errors import InvalidInput
from compression.losses.adaptive_alpha import adaptive_alpha_loss
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.group_dro import PARAMS as DRO_PARAMS
from compression.losses.group_dro import GroupDROLoss, robust_objective
from compression.losses.group_dro import param_problems as dro_problems
from compression.losses.harm_probe import (PROBE_PARAMS, probe_param_problems,
                                           weights_from_evidence)
from compression.losses.per_example import kd_per_example
from compression.losses.rebalance import LABEL_PARAMS, label_param_problems, label_term
from compression.losses.reference_floor import (FLOOR_PARAMS, ReferenceFloorLoss,
                                                floor_param_problems, floors_from_evidence)
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "DRO_PROBE_PARAMS", "param_problems", "dro_param_problems",
           "PairedDROLoss", "build", "build_dro"]

PARAMS: dict[str, Any] = {**PROBE_PARAMS, "mask_classes": False, "match_share": False,
                          **FLOOR_PARAMS, "eval_batch_size": 512, **LABEL_PARAMS}
DRO_PROBE_PARAMS: dict[str, Any] = {**PROBE_PARAMS, **DRO_PARAMS}


def param_problems(params: dict[str, Any]) -> list[str]:
    problems = probe_param_problems(params) + label_param_problems(params)
    problems += floor_param_problems(params)
    if params["reference_floor"] and params["match_share"]:
        problems.append("mitigation.params.reference_floor and match_share both weight the "
                        "examples; choose one")
    return problems


def _context_problems(params: dict[str, Any], context: LossContext) -> list[str]:
    problems = []
    if params["mask_classes"] and context.class_groups is None:
        problems.append("mitigation.params.mask_classes needs subgroups that group whole "
                        "classes (subgroups.by class, frequency or map); these subgroups cut "
                        "across classes")
    if params["reference_floor"] and (context.holdout is None or len(context.holdout) == 0):
        problems.append("reference_floor measures the student on the holdout split every "
                        "epoch, and the loss context has none; keep data.holdout_fraction > 0")
    return problems


def dro_param_problems(params: dict[str, Any]) -> list[str]:
    return probe_param_problems(params) + dro_problems(params)


def _alphas(spec: MitigationSpec, context: LossContext,
            params: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
    """alpha_g [K] and the facts behind them, for the report."""
    weights, prior = weights_from_evidence(context.harm_evidence, context.group_names,
                                           params["shrinkage"], params["prior_strength"])
    alphas = spec.alpha * weights.float()  # [K]
    return alphas, {"harm_evidence": context.harm_evidence, **prior,
                    "alpha_by_group": dict(zip(context.group_names, alphas.tolist()))}


def within_trusted_kl(student_logits: Tensor, teacher_logits: Tensor, trusted: Tensor,
                      temperature: float) -> Tensor:
    """``T^2 * p_U * KL(p(.|U) || q(.|U))`` per example: the teacher's knowledge within the
    trusted classes U alone, at temperature T. student_logits, teacher_logits: [B, C];
    trusted: [C] bool -> [B]. The student's logits of the other classes get no gradient
    from it, and neither does the mass it puts on them. All trusted: the usual KD term."""
    z = student_logits.float() / temperature
    t = teacher_logits.float() / temperature
    off = torch.where(trusted.to(z.device), 0.0, float("-inf"))  # [C]
    log_q = torch.log_softmax(z + off, dim=-1)  # [B, C], -inf off U
    log_p = torch.log_softmax(t + off, dim=-1)
    p_u = torch.softmax(t, dim=-1)[:, trusted.to(z.device)].sum(dim=-1)  # [B]
    kl = F.kl_div(log_q.clamp_min(-1e4), log_p.exp(), reduction="none").sum(dim=-1)
    return temperature ** 2 * p_u * kl


def gradient_ratio(student_logits: Tensor, loss_fn: Callable[[Tensor], Tensor],
                   label_fn: Callable[[Tensor], Tensor], rows: Tensor) -> Tensor:
    """r: the mean |d loss_i / d logits_i| over the mean |d label_i / d logits_i| on ``rows``
    ([B] bool), from [B, C] logits and the per-example loss and label term as functions of
    the logits; no gradient flows back through it."""
    z = student_logits.detach().float().requires_grad_(True)
    with torch.enable_grad():
        (d_loss,) = torch.autograd.grad(loss_fn(z).sum(), z)
        (d_label,) = torch.autograd.grad(label_fn(z).sum(), z)
    return d_loss.norm(dim=1)[rows].mean() / d_label.norm(dim=1)[rows].mean().clamp_min(1e-12)


def share_weights(student_logits: Tensor, loss_fn: Callable[[Tensor], Tensor],
                  label_fn: Callable[[Tensor], Tensor], alpha: Tensor,
                  full_alpha: float) -> Tensor:
    """``v_i`` of the module docstring: [B] alphas -> [B] weights, r measured on the rows that
    keep some teacher in this batch (this rank's, in DDP); 1 for all when none does."""
    if full_alpha <= 0 or not bool((alpha > 0).any()):
        return torch.ones_like(alpha)
    ratio = gradient_ratio(student_logits, loss_fn, label_fn, alpha > 0)
    return 1 + (ratio - 1) * (1 - alpha.float() / full_alpha)


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Per-subgroup alphas from ``context.harm_evidence``; with ``mask_classes`` the classes
    of subgroups not shown harmless (w_g < 1/2) are also left out of every example's KD term."""
    _raise(spec.name, param_problems(params) + _context_problems(params, context))
    alpha_by_group, facts = _alphas(spec, context, params)
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])
    temperature = spec.temperature
    trusted = None
    if params["mask_classes"]:
        w = alpha_by_group / spec.alpha if spec.alpha > 0 else torch.ones_like(alpha_by_group)
        trusted = w[list(context.class_groups)] >= 0.5  # [C]
        facts["trusted_classes"] = trusted.nonzero().squeeze(1).tolist()

    per_example = _per_example(alpha_by_group, trusted, temperature, label)
    if params["reference_floor"]:
        floors, floor_n, overall = floors_from_evidence(
            context.harm_evidence, context.group_names, params["floor_half"])
        return ReferenceFloorLoss(
            "paired_alpha", per_example, floors=floors, floor_n=floor_n, overall_floor=overall,
            holdout=context.holdout, eta=params["floor_eta"],
            max_weight=params["floor_max_weight"], eval_batch_size=params["eval_batch_size"],
            facts=facts, fit_half=params["floor_half"])

    def paired_alpha(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                     groups: Tensor) -> Tensor:
        if trusted is None and not params["match_share"]:
            return adaptive_alpha_loss(student_logits, teacher_logits, labels, groups,
                                       alpha_by_group, temperature, label=label)
        losses = per_example(student_logits, labels, teacher_logits, groups)
        if not params["match_share"]:
            return batch_mean(losses)
        alpha = alpha_by_group.to(student_logits.device, torch.float32)[groups]  # [B]
        v = share_weights(student_logits, lambda z: per_example(z, labels, teacher_logits,
                                                                groups),
                          lambda z: label(z, labels), alpha, spec.alpha)
        return batch_mean(v * losses) / batch_mean(v)

    return StatelessLoss("paired_alpha", paired_alpha, needs_teacher=True, facts=facts)


def _per_example(alpha_by_group: Tensor, trusted: Tensor | None, temperature: float,
                 label: Callable[[Tensor, Tensor], Tensor]
                 ) -> Callable[[Tensor, Tensor, Tensor | None, Tensor], Tensor]:
    """paired_alpha's loss of each example: (student_logits [B, C], labels [B],
    teacher_logits [B, C], groups [B]) -> [B]; with ``trusted`` [C] the KD term keeps to the
    trusted classes."""
    def per_example(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                    groups: Tensor) -> Tensor:
        alpha = alpha_by_group.to(student_logits.device, torch.float32)[groups]  # [B]
        if trusted is None:
            return kd_per_example(student_logits, teacher_logits, labels, alpha, temperature,
                                  label)
        return ((1 - alpha) * label(student_logits, labels)
                + alpha * within_trusted_kl(student_logits, teacher_logits, trusted,
                                            temperature))
    return per_example


class PairedDROLoss(GroupDROLoss):
    """Group DRO (weights updated from holdout error) with a per-subgroup teacher weight."""

    def __init__(self, alpha_by_group: Tensor, facts: dict[str, Any], **kwargs: Any):
        super().__init__(alpha=float(alpha_by_group.max()), **kwargs)
        self.name = "paired_dro"
        self.alpha_by_group, self.facts = alpha_by_group, facts

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "probe": self.facts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict({k: v for k, v in state.items() if k != "probe"})

    def __call__(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                 groups: Tensor) -> Tensor:
        if teacher_logits is None:
            raise ValueError("loss 'paired_dro' needs teacher_logits; got None")
        alpha = self.alpha_by_group.to(student_logits.device)[groups]  # [B]
        per_example = kd_per_example(student_logits, teacher_logits, labels, alpha,
                                     self.temperature, self.label)  # [B]
        return robust_objective(per_example, groups, self.weights, self.beta)


def build_dro(spec: MitigationSpec, context: LossContext,
              params: dict[str, Any]) -> PairedDROLoss:
    problems = dro_param_problems(params)
    if context.holdout is None or len(context.holdout) == 0:
        problems.append("paired_dro updates its weights from the holdout split, and the loss "
                        "context has none; keep data.holdout_fraction > 0")
    _raise(spec.name, problems)
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])
    return PairedDROLoss(*_alphas(spec, context, params), temperature=spec.temperature,
                         beta=params["beta"], eta=params["eta"], holdout=context.holdout,
                         num_groups=context.num_groups,
                         eval_batch_size=params["eval_batch_size"], label=label)


def _raise(name: str, problems: list[str]) -> None:
    if problems:
        raise InvalidInput(problems, f"invalid params for mitigation {name!r}")

