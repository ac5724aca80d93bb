"""Teacher-free rebalancing: objectives that correct for the training class prior alone.

They separate the causes when a mitigation helps on a long-tailed set: a student trained with
one of these and no teacher shows how much of the gain plain class rebalancing gives. The
same terms replace the cross entropy of the distillation objectives (param ``label_loss``).

With ``n_c`` the training count of class c (zero read as one) and ``pi_c = n_c / sum n``:

    logit_adjusted    CE(z + tau * log pi, y)                      Menon et al., ICLR 2021
    balanced_softmax  -log(n_y e^{z_y} / sum_c n_c e^{z_c})        Ren et al., NeurIPS 2020
    class_balanced    w_y * CE(z, y),  w_c = C * e_c / sum_h e_h,   Cui et al., CVPR 2019
                      e_c = (1 - beta) / (1 - beta ** n_c)

Balanced softmax is logit adjustment at ``tau = 1``: the ``log sum n`` it adds to every
logit cancels in the softmax. Each loss is the global-batch mean (``batch_mean``) of its
per-example values, so it keeps the data-parallel convention of ``compression.distributed``.
The adjusted logits are used in training only; the model predicts with ``argmax z``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from compression.distributed import batch_mean
from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.spec import MitigationSpec

__all__ = ["LABEL_LOSSES", "LABEL_PARAMS", "LA_PARAMS", "CB_PARAMS", "LabelTerm", "log_prior",
           "per_example_ce", "logit_adjusted_ce", "balanced_softmax_ce",
           "class_balanced_weights", "class_balanced_ce", "label_term", "label_param_problems",
           "logit_adjusted_problems", "class_balanced_problems", "build_logit_adjusted",
           "build_balanced_softmax", "build_class_balanced"]

# (student_logits [B, C], labels [B]) -> per-example loss [B]
LabelTerm = Callable[[Tensor, Tensor], Tensor]
LABEL_LOSSES = ("ce", "logit_adjusted", "balanced_softmax")
# The label term of a distillation objective; label_tau only acts with logit_adjusted.
LABEL_PARAMS: dict[str, Any] = {"label_loss": "ce", "label_tau": 1.0}
LA_PARAMS: dict[str, Any] = {"tau": 1.0}
CB_PARAMS: dict[str, Any] = {"beta": 0.999}
_MAX_TAU = 100.0


def _counts(class_counts: Sequence[int] | Tensor) -> Tensor:
    """[C] float64 counts, zero read as one (a class absent from train still gets a logit)."""
    return torch.as_tensor(list(class_counts), dtype=torch.float64).clamp_min(1.0)


def log_prior(class_counts: Sequence[int] | Tensor) -> Tensor:
    """class_counts: [C] -> log pi: [C] float32, pi_c = n_c / sum n."""
    counts = _counts(class_counts)
    return (counts / counts.sum()).log().float()


def per_example_ce(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Plain cross entropy. student_logits: [B, C]; labels: [B] int64 -> [B]."""
    return F.cross_entropy(student_logits.float(), labels, reduction="none")


def logit_adjusted_ce(student_logits: Tensor, labels: Tensor, log_pi: Tensor,
                      tau: float = 1.0) -> Tensor:
    """``CE(z + tau * log pi, y)`` per example. student_logits: [B, C]; labels: [B];
    log_pi: [C] -> [B]. A rare class gets a low offset, so it must win by a larger margin."""
    z = student_logits.float()
    return F.cross_entropy(z + tau * log_pi.to(z.device, z.dtype), labels, reduction="none")


def balanced_softmax_ce(student_logits: Tensor, labels: Tensor,
                        class_counts: Sequence[int] | Tensor) -> Tensor:
    """``-log(n_y e^{z_y} / sum_c n_c e^{z_c})`` per example, as Ren et al. write it (with
    counts, not frequencies). student_logits: [B, C]; labels: [B]; class_counts: [C] -> [B]."""
    z = student_logits.float()
    log_n = _counts(class_counts).log().to(z.device, z.dtype)
    return F.cross_entropy(z + log_n, labels, reduction="none")


def class_balanced_weights(class_counts: Sequence[int] | Tensor, beta: float) -> Tensor:
    """Cui et al.'s inverse effective numbers, scaled to sum to C: [C] -> [C] float32.

    beta = 0 gives every class weight 1 (plain CE); beta -> 1 tends to inverse frequency.
    """
    counts = _counts(class_counts)
    inverse_effective = (1.0 - beta) / (1.0 - beta ** counts)  # counts >= 1: never 0 / 0
    return (inverse_effective * len(counts) / inverse_effective.sum()).float()


def class_balanced_ce(student_logits: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
    """``w_y * CE(z, y)`` per example. student_logits: [B, C]; labels: [B]; weights: [C]
    -> [B]. Weighted per example (not torch's weighted mean) so the batch mean stays the
    global-batch mean under data parallelism."""
    return weights.to(student_logits.device)[labels] * per_example_ce(student_logits, labels)


def label_term(name: str, class_counts: Sequence[int], tau: float = 1.0) -> LabelTerm:
    """The per-example label loss a distillation objective uses in place of CE."""
    if name == "ce":
        return per_example_ce
    if name == "logit_adjusted":
        log_pi = log_prior(class_counts)
        return lambda z, y: logit_adjusted_ce(z, y, log_pi, tau)
    if name == "balanced_softmax":
        counts = list(class_counts)
        return lambda z, y: balanced_softmax_ce(z, y, counts)
    raise InvalidInput(f"mitigation.params.label_loss is {name!r}; use {', '.join(LABEL_LOSSES)}")


def label_param_problems(params: dict[str, Any]) -> list[str]:
    """Problems with ``label_loss`` / ``label_tau``, found without data."""
    problems = []
    if params["label_loss"] not in LABEL_LOSSES:
        problems.append(f"mitigation.params.label_loss is {params['label_loss']!r}; use "
                        f"{', '.join(LABEL_LOSSES)}")
    if not 0 <= params["label_tau"] <= _MAX_TAU:
        problems.append(f"mitigation.params.label_tau is {params['label_tau']}; it must be in "
                        f"[0, {_MAX_TAU:g}]")
    elif params["label_tau"] != LABEL_PARAMS["label_tau"] and \
            params["label_loss"] != "logit_adjusted":
        # An ignored setting is a mistake the user would not otherwise see.
        problems.append(f"mitigation.params.label_tau is {params['label_tau']} but only acts "
                        f"with label_loss logit_adjusted (label_loss is "
                        f"{params['label_loss']!r})")
    return problems


def logit_adjusted_problems(params: dict[str, Any]) -> list[str]:
    if not 0 <= params["tau"] <= _MAX_TAU:
        return [f"mitigation.params.tau is {params['tau']}; it must be in [0, {_MAX_TAU:g}]"]
    return []


def class_balanced_problems(params: dict[str, Any]) -> list[str]:
    if not 0 <= params["beta"] < 1:
        return [f"mitigation.params.beta is {params['beta']}; it must be in [0, 1), "
                "e.g. 0.999 (Cui et al. use 0.9 to 0.9999)"]
    return []


def _checked(name: str, problems: list[str]) -> None:
    if problems:
        raise InvalidInput(problems, f"invalid params for mitigation {name!r}")


def build_logit_adjusted(spec: MitigationSpec, context: LossContext,
                         params: dict[str, Any]) -> Loss:
    """Logit-adjusted CE on the labels, priors from the training class counts; no teacher."""
    _checked(spec.name, logit_adjusted_problems(params))
    log_pi, tau = log_prior(context.train_class_counts), params["tau"]

    def logit_adjusted(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                       groups: Tensor) -> Tensor:
        return batch_mean(logit_adjusted_ce(student_logits, labels, log_pi, tau))

    return StatelessLoss("logit_adjusted", logit_adjusted, needs_teacher=False)


def build_balanced_softmax(spec: MitigationSpec, context: LossContext,
                           params: dict[str, Any]) -> Loss:
    """Balanced softmax on the labels, counts from the training split; no teacher."""
    del spec, params
    counts = list(context.train_class_counts)

    def balanced_softmax(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                         groups: Tensor) -> Tensor:
        return batch_mean(balanced_softmax_ce(student_logits, labels, counts))

    return StatelessLoss("balanced_softmax", balanced_softmax, needs_teacher=False)


def build_class_balanced(spec: MitigationSpec, context: LossContext,
                         params: dict[str, Any]) -> Loss:
    """Effective-number class weights on CE; no teacher."""
    _checked(spec.name, class_balanced_problems(params))
    weights = class_balanced_weights(context.train_class_counts, params["beta"])

    def class_balanced(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                       groups: Tensor) -> Tensor:
        return batch_mean(class_balanced_ce(student_logits, labels, weights))

    return StatelessLoss("class_balanced", class_balanced, needs_teacher=False)
