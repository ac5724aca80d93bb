"""``group_dro``: robust distillation for the worst subgroup (Wang et al., UAI 2023).

Group weights w (a distribution over the K subgroups) trade the average loss for the
worst-group loss, with per-example loss l_i the KD loss (1 - alpha) * CE_i + alpha*T^2*KL_i:

    loss = (1 - beta) * mean_i l_i + beta * sum_g w_g * mean_{i in g} l_i

(means over the global batch; a subgroup absent from the batch adds nothing). After every
epoch the training loop calls ``on_epoch_end(model)``: w moves toward the subgroups where the
student errs on the HOLDOUT split, by exponentiated gradient

    w_g <- w_g * exp(eta * err_g),  then w <- w / sum(w)

err_g: the student's holdout 0-1 error on subgroup g (0 for a subgroup with no holdout
examples). Updating from held-out error rather than training loss follows the paper's
algorithm: an over-parameterised student drives its training error to zero in every class.
The weights are the loss's state, checkpointed with the model, so a resume is exact.

``group_dro_one_hot`` is the same objective with the teacher term removed (alpha = 0, no
teacher needed): the teacher-free reference that tells how much of group_dro's gain comes
from reweighting the groups alone. Param ``label_loss`` swaps a rebalanced label term in for
CE in either (``compression.losses.rebalance``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from compression.data.dataset import Split
from compression.distributed import all_reduce_sum, world_size
from compression.errors import InvalidInput
from compression.evaluation.predict import predict_logits
from compression.losses.base import LossContext
from compression.losses.per_example import kd_per_example
from compression.losses.rebalance import (LABEL_PARAMS, LabelTerm, label_param_problems,
                                          label_term)
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "param_problems", "robust_objective", "exponentiated_gradient",
           "holdout_group_error",
           "GroupDROLoss", "build", "build_one_hot"]

PARAMS: dict[str, Any] = {"beta": 0.5, "eta": 1.0, "eval_batch_size": 512, **LABEL_PARAMS}


def robust_objective(per_example: Tensor, groups: Tensor, weights: Tensor,
                     beta: float) -> Tensor:
    """(1 - beta) * mean + beta * sum_g w_g * mean_g of per_example: [B] over the global batch.

    groups: [B] ids in [0, K); weights: [K]. Batch and group sizes are all-reduced across
    ranks; the value follows the convention of ``compression.distributed``.
    """
    k = weights.shape[0]
    counts = torch.bincount(groups, minlength=k).to(per_example.dtype)  # [K]
    stats = all_reduce_sum(torch.cat([counts, counts.new_tensor([groups.shape[0]])]))
    group_size, total = stats[:k].clamp_min(1.0), stats[k].clamp_min(1.0)
    w = weights.to(per_example.device, per_example.dtype)
    coef = (1 - beta) / total + beta * (w / group_size)[groups]  # [B]
    return world_size() * (coef * per_example).sum()


def exponentiated_gradient(weights: Tensor, error: Tensor, eta: float) -> Tensor:
    """weights: [K] a distribution; error: [K] in [0, 1] -> w * exp(eta * error), renormalised.

    Computed in log space so that many epochs of large errors cannot overflow.
    """
    logits = weights.double().log() + eta * error.double()
    return torch.softmax(logits, dim=0)


def holdout_group_error(model: nn.Module, holdout: Split, num_groups: int,
                        batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """The student's 0-1 error per subgroup on holdout -> (error [K], n [K]); error 0 if n 0."""
    params = next(model.parameters(), None)
    device = params.device if params is not None else torch.device("cpu")
    preds = predict_logits(model, holdout, batch_size, device).argmax(dim=1)  # [N]
    group = holdout.group.cpu().long()
    n = torch.bincount(group, minlength=num_groups).double()
    wrong = torch.zeros(num_groups, dtype=torch.float64).index_add_(
        0, group, (preds != holdout.y.cpu()).double())
    return wrong / n.clamp_min(1.0), n


class GroupDROLoss:
    """The group-DRO objective with its weights as state. Call as any ``Loss``.

    label: the per-example label term (None: CE). needs_teacher False (group_dro_one_hot)
    requires alpha 0: the loss then never reads teacher logits.
    """

    def __init__(self, *, alpha: float, temperature: float, beta: float, eta: float,
                 holdout: Split, num_groups: int, eval_batch_size: int = 512,
                 label: LabelTerm | None = None, needs_teacher: bool = True):
        if not needs_teacher and alpha != 0:
            raise ValueError(f"a teacher-free group-DRO loss needs alpha 0; got {alpha}")
        self.name = "group_dro" if needs_teacher else "group_dro_one_hot"
        self.needs_teacher, self.label = needs_teacher, label
        self.alpha, self.temperature, self.beta, self.eta = alpha, temperature, beta, eta
        self.holdout, self.num_groups, self.eval_batch_size = holdout, num_groups, eval_batch_size
        self.weights = torch.full((num_groups,), 1.0 / num_groups, dtype=torch.float64)
        self.updates = 0
        self.holdout_error: list[float] = []

    def __call__(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                 groups: Tensor) -> Tensor:
        """student_logits: [B, C]; labels, groups: [B]; teacher_logits: [B, C] -> scalar."""
        if teacher_logits is None and self.alpha > 0:
            raise ValueError("loss 'group_dro' needs teacher_logits; got None")
        per_example = kd_per_example(student_logits, teacher_logits, labels, self.alpha,
                                     self.temperature, self.label)  # [B]
        return robust_objective(per_example, groups, self.weights, self.beta)

    def on_epoch_end(self, model: nn.Module) -> None:
        """Move the weights toward the subgroups where ``model`` errs on the holdout split."""
        error, _ = holdout_group_error(model, self.holdout, self.num_groups,
                                       self.eval_batch_size)
        self.weights = exponentiated_gradient(self.weights, error, self.eta)
        self.updates += 1
        self.holdout_error = error.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"group_weights": self.weights.clone(), "updates": self.updates,
                "holdout_error": list(self.holdout_error)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = state.get("group_weights") if isinstance(state, dict) else None
        if not isinstance(weights, Tensor) or weights.shape != (self.num_groups,):
            raise InvalidInput(f"the checkpoint's loss state {sorted(state or {})} is not "
                               f"group_dro weights for {self.num_groups} subgroups; resume "
                               "with the mitigation and subgroups it was trained with")
        self.weights = weights.detach().cpu().double().clone()
        self.updates = int(state.get("updates", 0))
        self.holdout_error = [float(e) for e in state.get("holdout_error", [])]

    def __repr__(self) -> str:
        return (f"GroupDROLoss({self.name!r}, alpha={self.alpha}, beta={self.beta}, "
                f"eta={self.eta}, "
                f"weights={[round(w, 4) for w in self.weights.tolist()]})")


def param_problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with ``params`` (checked without data, e.g. when a job is submitted)."""
    problems = []
    if not 0 <= params["beta"] <= 1:
        problems.append(f"mitigation.params.beta is {params['beta']}; it must be in [0, 1]")
    if not 0 <= params["eta"] <= 1000:
        problems.append(f"mitigation.params.eta is {params['eta']}; it must be in [0, 1000]")
    if not 1 <= params["eval_batch_size"] <= 2**20:
        problems.append(f"mitigation.params.eval_batch_size is {params['eval_batch_size']}; "
                        "it must be in [1, 1048576]")
    return problems + label_param_problems(params)


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> GroupDROLoss:
    """Needs ``context.holdout`` (``LossContext.from_dataset`` sets it)."""
    return _build(spec.alpha, spec.temperature, context, params, needs_teacher=True)


def build_one_hot(spec: MitigationSpec, context: LossContext,
                  params: dict[str, Any]) -> GroupDROLoss:
    """``group_dro_one_hot``: group DRO on the label term alone; alpha and T are ignored."""
    return _build(0.0, spec.temperature, context, params, needs_teacher=False)


def _build(alpha: float, temperature: float, context: LossContext, params: dict[str, Any], *,
           needs_teacher: bool) -> GroupDROLoss:
    name = "group_dro" if needs_teacher else "group_dro_one_hot"
    problems = param_problems(params)
    if context.holdout is None or len(context.holdout) == 0:
        problems.append(f"{name} updates its weights from the holdout split, and the loss "
                        "context has none; build it with LossContext.from_dataset and keep "
                        "data.holdout_fraction > 0")
    if problems:
        raise InvalidInput(problems, f"cannot build mitigation {name!r}")
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])
    return GroupDROLoss(alpha=alpha, temperature=temperature, beta=params["beta"],
                        eta=params["eta"], holdout=context.holdout,
                        num_groups=context.num_groups, eval_batch_size=params["eval_batch_size"],
                        label=label, needs_teacher=needs_teacher)
