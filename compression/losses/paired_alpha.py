"""``paired_alpha`` and ``paired_dro``: the teacher's weight per subgroup from measured harm.

``compression.losses.harm_probe`` compares a short distilled student with a short student
trained on the label term alone, paired and cross-fitted, and gives each subgroup g a weight
w_g in [0, 1], the posterior probability that distillation is at least as good there. Then

    paired_alpha:  loss = mean_i [(1 - alpha_i) * CE_i + alpha_i * T^2 * KL_i]
    paired_dro:    the group_dro objective with the same per-example loss
                   alpha_i = alpha * w_{g_i}

so a subgroup where the teacher is not shown to do no harm falls back toward the label term,
however accurate the teacher is there. CE_i is the label term of param ``label_loss``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

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
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "DRO_PROBE_PARAMS", "param_problems", "dro_param_problems",
           "PairedDROLoss", "build", "build_dro"]

PARAMS: dict[str, Any] = {**PROBE_PARAMS, **LABEL_PARAMS}
DRO_PROBE_PARAMS: dict[str, Any] = {**PROBE_PARAMS, **DRO_PARAMS}


def param_problems(params: dict[str, Any]) -> list[str]:
    return probe_param_problems(params) + label_param_problems(params)


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


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Per-subgroup alphas from ``context.harm_evidence``."""
    _raise(spec.name, param_problems(params))
    alpha_by_group, facts = _alphas(spec, context, params)
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])
    temperature = spec.temperature

    def paired_alpha(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                     groups: Tensor) -> Tensor:
        return adaptive_alpha_loss(student_logits, teacher_logits, labels, groups,
                                   alpha_by_group, temperature, label=label)

    return StatelessLoss("paired_alpha", paired_alpha, needs_teacher=True, facts=facts)


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

