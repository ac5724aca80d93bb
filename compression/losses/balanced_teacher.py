"""``balanced_teacher``: KD from a teacher recalibrated per class for the balanced error.

Wang et al. (UAI 2023) find that what a robust student needs from its teacher is per-class
calibration, and a teacher trained on a long tail scores its rare classes low. Plain NLL
calibration on a holdout split with the same long tail keeps that bias (the prior is what
NLL rewards there). This objective refits the teacher's logits on holdout for the
class-balanced NLL (every class weighs the same, whatever its size):

    t~ = t / T_cal - tau * log pi + r                         T_cal > 0, tau, r in R^C
    fit: min (1 / C') sum_c mean_{i: y_i = c} -log softmax(t~_i)[c] + l2 * ||r||^2

pi: the training class frequencies; C': the classes present in holdout. One shared
temperature and one shared prior weight ``tau`` are pinned down by every class; the per-class
residual ``r`` (off with ``class_bias: false``) is held toward 0 by the L2 term, so a class
with a handful of holdout images moves the fit little. The loss is KD on t~:

    loss = mean_i [(1 - alpha) * CE_i + alpha * T^2 * KL(softmax(t~_i / T) || softmax(z_i / T))]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.core import kd_loss
from compression.losses.rebalance import (LABEL_PARAMS, label_param_problems, label_term,
                                          log_prior)
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "BalancedCalibration", "fit_balanced", "param_problems", "build"]

PARAMS: dict[str, Any] = {"class_bias": True, "l2": 0.05, **LABEL_PARAMS}


@dataclass(frozen=True)
class BalancedCalibration:
    """temperature: T_cal; tau: weight of -log pi; bias: r [C]; log_pi: [C]."""

    temperature: float
    tau: float
    bias: Tensor
    log_pi: Tensor

    def apply(self, logits: Tensor) -> Tensor:
        """[B, C] -> [B, C] recalibrated logits (float32, on the logits' device)."""
        z = logits.float()
        shift = (self.bias - self.tau * self.log_pi).to(z.device, z.dtype)
        return z / self.temperature + shift

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "tau": self.tau, "bias": self.bias.tolist()}


def balanced_nll(z: Tensor, y: Tensor) -> Tensor:
    """Mean over present classes of the class's mean NLL. z: [N, C]; y: [N] -> scalar."""
    nll = F.cross_entropy(z, y, reduction="none")  # [N]
    c = z.shape[1]
    count = torch.bincount(y, minlength=c).to(z.dtype)
    per_class = torch.zeros(c, dtype=z.dtype).index_add_(0, y, nll)
    present = count > 0
    return (per_class[present] / count[present]).mean()


def fit_balanced(logits: Tensor, y: Tensor, class_counts: list[int], *, class_bias: bool = True,
                 l2: float = 0.05, max_iter: int = 60) -> BalancedCalibration:
    """Fit the module docstring's t~ on holdout logits [N, C] and labels [N] (L-BFGS, float64)."""
    if logits.ndim != 2 or len(logits) == 0 or len(logits) != len(y):
        raise InvalidInput(f"balanced_teacher needs the teacher's holdout logits [N, C] and "
                           f"labels [N]; got {tuple(logits.shape)} and {tuple(y.shape)}")
    z, y = logits.detach().cpu().double(), y.detach().cpu().long()
    log_pi = log_prior(class_counts).double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    tau = torch.zeros((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=class_bias)
    params = [log_t, tau] + ([bias] if class_bias else [])
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = balanced_nll(z / log_t.exp() - tau * log_pi + bias, y) + l2 * (bias ** 2).sum()
        loss.backward()
        return loss
    opt.step(closure)
    return BalancedCalibration(float(log_t.detach().exp()), float(tau.detach()),
                               bias.detach().float(), log_pi.float())


def param_problems(params: dict[str, Any]) -> list[str]:
    problems = []
    if not 0 <= params["l2"] <= 100:
        problems.append(f"mitigation.params.l2 is {params['l2']}; it must be in [0, 100]")
    return problems + label_param_problems(params)


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """Fit on ``context.teacher_holdout_logits`` and the holdout labels, then KD on t~."""
    problems = param_problems(params)
    if context.teacher_holdout_logits is None or context.holdout is None:
        problems.append("balanced_teacher fits the teacher on holdout and the loss context "
                        "has no teacher holdout logits; the pipeline provides them")
    if problems:
        raise InvalidInput(problems, "cannot build mitigation 'balanced_teacher'")
    fitted = fit_balanced(context.teacher_holdout_logits, context.holdout.y,
                          context.train_class_counts, class_bias=params["class_bias"],
                          l2=params["l2"])
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])
    alpha, temperature = spec.alpha, spec.temperature

    def balanced_teacher(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                         groups: Tensor) -> Tensor:
        if teacher_logits is None:
            raise ValueError("loss 'balanced_teacher' needs teacher_logits; got None")
        return kd_loss(student_logits, fitted.apply(teacher_logits), labels, alpha,
                       temperature, label)

    return StatelessLoss("balanced_teacher", balanced_teacher, needs_teacher=True,
                         facts={"calibration": fitted.to_dict()})
