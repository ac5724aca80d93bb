"""``ltkd``: long-tailed KD, the KD KL split into a cross-group and a within-group term.

Kim, "Distilling Balanced Knowledge from a Biased Teacher" (CVPR 2026). Classes fall into
groups G (head / medium / tail). With p = softmax(t / T), q = softmax(s / T), group masses
p_G = sum_{c in G} p_c and conditionals p(c|G) = p_c / p_G, the KL splits exactly:

    KL(p || q) = KL(p_G || q_G) + sum_G p_G * KL(p(.|G) || q(.|G))

A head-biased teacher inflates p_G of the head (cross-group term) and lets the head dominate
the within-group sum through its weight p_G. LTKD therefore (1) rebalances the teacher's
group distribution, p~_G = (p_G / pi_G) / sum_H (p_H / pi_H), and (2) weights the groups
equally, 1/|G| instead of p_G:

    ltkd_i = T^2 * [KL(p~_G || q_G) + (1/|G|) * sum_G KL(p(.|G) || q(.|G))]
    loss   = mean_i [(1 - alpha) * CE_i + alpha * ltkd_i]     (global batch; see distributed)

pi_G (param ``prior``): "batch" (default), the teacher's mean group mass p_G at temperature
T over the global batch (all-reduced across ranks): it measures the teacher's own group bias
at the temperature the student sees; or "train", the group's share of the training set. The
train prior is a temperature-1 quantity: at T = 4 it over-corrects a good teacher, whose
softened masses are already flatter than the prior, until the tail group wins on every
example. rebalance / reweight false turn each correction off; both off is plain KD. Param
``label_loss`` swaps a rebalanced label term in for CE (``compression.losses.rebalance``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from compression.data.subgroups import frequency_groups
from compression.distributed import all_reduce_sum, batch_mean
from compression.errors import InvalidInput
from compression.losses.base import Loss, LossContext, StatelessLoss
from compression.losses.rebalance import LABEL_PARAMS, label_param_problems, label_term
from compression.spec import MitigationSpec

__all__ = ["PARAMS", "param_problems", "frequency_partition", "kl_split", "batch_group_prior",
           "ltkd_kl",
           "class_partition", "build"]

PARAMS: dict[str, Any] = {"num_groups": 3, "partition": "auto", "rebalance": True,
                          "reweight": True, "prior": "batch", **LABEL_PARAMS}


def frequency_partition(counts: Sequence[int], num_groups: int) -> list[int]:
    """Group of each class by training count: 0 most frequent .. num_groups - 1 rarest.

    3 groups: exactly the head / medium / tail of ``subgroups.by: frequency``. Otherwise the
    classes ranked by count are cut into near-equal runs, the rarest runs one class longer.
    """
    if num_groups == 3:
        return frequency_groups(counts)[0].tolist()
    counts = np.asarray(counts, dtype=np.int64)
    rarest_first = np.lexsort((np.arange(len(counts)), -counts))[::-1]
    table = np.zeros(len(counts), dtype=np.int64)
    for i, chunk in enumerate(np.array_split(rarest_first, num_groups)):
        table[chunk] = num_groups - 1 - i
    return table.tolist()


def kl_split(student_logits: Tensor, teacher_logits: Tensor, class_group: Tensor,
             num_groups: int, temperature: float) -> tuple[Tensor, Tensor, Tensor]:
    """The pieces of KL(p || q) at temperature T, each without the T^2.

    student_logits, teacher_logits: [B, C]; class_group: [C] ids in [0, K), every group
    non-empty -> (p_group [B, K], log_q_group [B, K], within [B, K]) where within[:, k] is
    KL(p(.|k) || q(.|k)). KL(p || q) = KL(p_group || q_group) + (p_group * within).sum(1).
    """
    member = F.one_hot(class_group.to(student_logits.device), num_groups).T.bool()  # [K, C]
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # [B, C]
    p = F.softmax(teacher_logits.float() / temperature, dim=-1)  # [B, C]
    masked = log_q[:, None, :].masked_fill(~member[None], float("-inf"))  # [B, K, C]
    log_q_group = masked.logsumexp(dim=-1)  # [B, K]
    p_group = p @ member.T.float()  # [B, K]
    by_class = class_group.to(student_logits.device)
    # A group the teacher gives no mass has no conditional; 0 / tiny keeps it 0, not NaN.
    p_cond = p / p_group[:, by_class].clamp_min(1e-30)  # [B, C]
    log_q_cond = log_q - log_q_group[:, by_class]  # [B, C]
    per_class = F.kl_div(log_q_cond, p_cond, reduction="none")  # [B, C], xlogy: 0 at p = 0
    within = per_class @ member.T.float()  # [B, K]
    return p_group, log_q_group, within


def batch_group_prior(p_group: Tensor) -> Tensor:
    """Mean teacher group mass over the global batch: p_group [B, K] -> [K] (all-reduced)."""
    stats = all_reduce_sum(torch.cat([p_group.detach().sum(0),
                                      p_group.new_tensor([p_group.shape[0]])]))
    return stats[:-1] / stats[-1].clamp_min(1.0)


def ltkd_kl(student_logits: Tensor, teacher_logits: Tensor, class_group: Tensor,
            num_groups: int, temperature: float, *, group_prior: Tensor | str | None = None,
            reweight: bool = True) -> Tensor:
    """Per-example T^2 * (cross-group + within-group) terms: [B, C] x2 -> [B].

    group_prior: [K] to rebalance the teacher's group masses by, "batch" for
    ``batch_group_prior``, None for no rebalancing. reweight: 1/K per group, else p_G.
    """
    p_group, log_q_group, within = kl_split(student_logits, teacher_logits, class_group,
                                            num_groups, temperature)
    target = p_group
    if isinstance(group_prior, str):
        group_prior = batch_group_prior(p_group)
    if group_prior is not None:
        target = p_group / group_prior.to(p_group.device).clamp_min(1e-12)
        target = target / target.sum(dim=1, keepdim=True)
    cross = F.kl_div(log_q_group, target, reduction="none").sum(dim=1)  # [B]
    weight = torch.full_like(p_group, 1.0 / num_groups) if reweight else p_group
    return temperature ** 2 * (cross + (weight * within).sum(dim=1))


def build(spec: MitigationSpec, context: LossContext, params: dict[str, Any]) -> Loss:
    """The class partition from the subgroups or from train frequencies (``class_partition``)."""
    _check(context, params)
    class_group, num_groups = class_partition(context, params["partition"],
                                              params["num_groups"])
    group_prior: Tensor | str | None = None
    if params["rebalance"]:
        counts = torch.tensor(context.train_class_counts, dtype=torch.float64).clamp_min(1.0)
        train_prior = torch.zeros(num_groups, dtype=torch.float64).index_add_(
            0, class_group, counts)
        group_prior = "batch" if params["prior"] == "batch" else \
            (train_prior / train_prior.sum()).float()
    alpha, temperature, reweight = spec.alpha, spec.temperature, params["reweight"]
    label = label_term(params["label_loss"], context.train_class_counts, params["label_tau"])

    def ltkd(student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
             groups: Tensor) -> Tensor:
        ce = label(student_logits, labels)  # [B]
        kl = ltkd_kl(student_logits, teacher_logits, class_group, num_groups, temperature,
                     group_prior=group_prior, reweight=reweight)
        return batch_mean((1 - alpha) * ce + alpha * kl)

    return StatelessLoss("ltkd", ltkd, needs_teacher=True)


def class_partition(context: LossContext, partition: str = "auto",
                    num_groups: int = 3) -> tuple[Tensor, int]:
    """(group id per class [C] with empty groups dropped, number of groups).

    auto: the job's subgroups when they group classes coarser than one class per group (by
    frequency, by map); otherwise the train-frequency partition into ``num_groups`` (more
    groups than classes leave some empty, and those are dropped). subgroups: the job's
    subgroups (``context.class_groups`` must be set). frequency: always by frequency.
    """
    given = context.class_groups
    coarser = given is not None and len(set(given)) < context.num_classes
    use_given = given is not None and (partition == "subgroups" or
                                       (partition == "auto" and coarser))
    table = list(given) if use_given else frequency_partition(context.train_class_counts,
                                                               num_groups)
    _, compact = np.unique(np.asarray(table), return_inverse=True)  # drop empty groups
    return torch.as_tensor(compact.reshape(-1), dtype=torch.long), int(compact.max()) + 1


def param_problems(params: dict[str, Any]) -> list[str]:
    """What is wrong with ``params`` (checked without data, e.g. when a job is submitted)."""
    problems = []
    if params["partition"] not in ("auto", "frequency", "subgroups"):
        problems.append(f"partition is {params['partition']!r}; use auto, frequency or subgroups")
    if params["prior"] not in ("train", "batch"):
        problems.append(f"prior is {params['prior']!r}; use train or batch")
    if not 1 <= params["num_groups"] <= 10_000:
        problems.append(f"num_groups is {params['num_groups']}; it must be in [1, 10000]")
    return [f"mitigation.params.{p}" for p in problems] + label_param_problems(params)


def _check(context: LossContext, params: dict[str, Any]) -> None:
    problems = param_problems(params)
    if params["partition"] == "subgroups" and context.class_groups is None:
        problems.append("mitigation.params.partition is 'subgroups' but the job's subgroups do "
                        "not group classes (each class must fall in one subgroup); use auto or "
                        "frequency")
    if problems:
        raise InvalidInput(problems, "invalid params for mitigation 'ltkd'")
