"""How reliable the teacher is on each subgroup and class, measured on the HOLDOUT split.

Mitigations that soften the teacher where it is weak (``adaptive_alpha``, ``adaptive_margin``)
read these numbers. Small subgroups give noisy estimates, so each rate is also given shrunk
toward the overall rate with a Beta prior worth ``prior_strength`` pseudo-examples:

    shrunk_accuracy  = (correct        + m * overall_accuracy)  / (n + m)
    shrunk_true_prob = (sum_true_prob  + m * overall_true_prob) / (n + m)

(the posterior mean under Beta(m * overall, m * (1 - overall)); for the true-label
probability the same form with the probabilities as fractional successes). A group with no
holdout examples gets the overall value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import math

import torch
from torch import Tensor

from compression.errors import InvalidInput

__all__ = ["ECE_BINS", "GroupReliability", "TeacherReliability", "profile_teacher",
           "expected_calibration_error", "reliability_values", "beta_cdf",
           "empirical_bayes_strength"]

ECE_BINS = 15


@dataclass(frozen=True)
class GroupReliability:
    """The teacher on one subgroup (or class, or the whole split). Rates are None when n == 0."""

    name: str
    n: int
    correct: int
    true_prob_sum: float  # sum over the group's examples of p(true label)
    accuracy: float | None
    mean_true_prob: float | None
    mean_margin: float | None  # p(true) minus the largest other probability, averaged
    ece: float | None  # top-1 expected calibration error, ECE_BINS equal-width bins
    shrunk_accuracy: float
    shrunk_true_prob: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TeacherReliability:
    """groups: in group-id order; classes: in class-id order; overall: the whole split."""

    prior_strength: float
    overall: GroupReliability
    groups: tuple[GroupReliability, ...]
    classes: tuple[GroupReliability, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; this is the form ``LossContext.teacher_reliability`` takes."""
        return {"split": "holdout", "prior_strength": self.prior_strength, "ece_bins": ECE_BINS,
                "overall": self.overall.to_dict(),
                "groups": [g.to_dict() for g in self.groups],
                "classes": [c.to_dict() for c in self.classes]}


def profile_teacher(logits: Tensor, y: Tensor, group: Tensor, group_names: Sequence[str],
                    prior_strength: float = 20.0, *,
                    class_names: Sequence[str] | None = None) -> TeacherReliability:
    """Per-subgroup and per-class reliability of the teacher from its HOLDOUT logits.

    logits: [N, C] teacher logits (softmax at temperature 1); y: [N] class ids;
    group: [N] subgroup ids in [0, len(group_names)). class_names default to "0".."C-1".
    """
    logits, y, group = _checked(logits, y, group, len(group_names), prior_strength)
    probs = logits.double().softmax(dim=1)  # [N, C]
    true_p = probs.gather(1, y[:, None]).squeeze(1)  # [N]
    other = probs.scatter(1, y[:, None], -1.0).max(dim=1).values if probs.shape[1] > 1 \
        else torch.zeros_like(true_p)  # [N]
    conf, pred = probs.max(dim=1)
    hit = pred == y
    cols = _Columns(hit, true_p, true_p - other, conf)
    overall = cols.summary("overall", torch.ones_like(hit), None, prior_strength)
    prior = (overall.accuracy, overall.mean_true_prob)
    names = class_names if class_names is not None else [str(c) for c in range(probs.shape[1])]
    if len(names) != probs.shape[1]:
        raise InvalidInput(f"{len(names)} class names for teacher logits of {probs.shape[1]} "
                           "classes; give one name per class")
    return TeacherReliability(
        prior_strength=float(prior_strength), overall=overall,
        groups=tuple(cols.summary(n, group == g, prior, prior_strength)
                     for g, n in enumerate(group_names)),
        classes=tuple(cols.summary(n, y == c, prior, prior_strength) for c, n in enumerate(names)))


def expected_calibration_error(confidence: Tensor, hit: Tensor, bins: int = ECE_BINS) -> float:
    """sum_b (n_b / n) * |accuracy_b - mean confidence_b| over equal-width bins (lo, hi].

    confidence: [N] top-1 probability; hit: [N] bool, top-1 correct. 0.0 for N == 0.
    """
    n = confidence.numel()
    if n == 0:
        return 0.0
    conf = confidence.double()
    idx = (torch.ceil(conf * bins) - 1).clamp(0, bins - 1).long()  # (lo, hi]; 0 -> first bin
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, conf)
    hit_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, hit.double())
    return float((hit_sum - conf_sum).abs().sum() / n)  # |acc_b - conf_b| * n_b, summed


def reliability_values(reliability: Mapping[str, Any] | None, level: str, measure: str,
                       names: Sequence[str] | None = None, count: int | None = None,
                       ) -> list[float]:
    """Shrunk reliability per group or class from ``TeacherReliability.to_dict()`` output.

    level: "groups" or "classes"; measure: "accuracy" or "prob" (true-label probability).
    names: look rows up by name in this order; None: take the rows in id order, which must
    number ``count``. Raises InvalidInput when the profile is missing or does not match.
    """
    if reliability is None:
        raise InvalidInput("this mitigation needs the teacher's holdout reliability; profile "
                           "the teacher with compression.reliability.profile_teacher and pass "
                           "its to_dict() as LossContext.teacher_reliability")
    key = {"accuracy": "shrunk_accuracy", "prob": "shrunk_true_prob"}[measure]
    try:
        rows = [(str(row["name"]), float(row[key])) for row in reliability[level]]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidInput(f"teacher_reliability has no usable {level!r} table ({exc}); build "
                           "it with TeacherReliability.to_dict()") from exc
    if names is None:
        if count is not None and len(rows) != count:
            raise InvalidInput(f"teacher_reliability.{level} has {len(rows)} rows but the job "
                               f"has {count}; profile the teacher on this job's data")
        return [value for _, value in rows]
    table = dict(rows)
    missing = [n for n in names if n not in table]
    if missing:
        raise InvalidInput(f"teacher_reliability.{level} lacks {missing}; it has "
                           f"{sorted(table)}: profile the teacher on this job's data")
    return [table[n] for n in names]


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(X <= x) for X ~ Beta(a, b), a, b > 0: the regularised incomplete beta function,
    by its continued fraction (modified Lentz), on the side where it converges fast."""
    if not (a > 0 and b > 0):
        raise ValueError(f"Beta({a}, {b}): both parameters must be > 0")
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _beta_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(1 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float, steps: int = 300) -> float:
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    out = d
    for m in range(1, steps + 1):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            out *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return out


def empirical_bayes_strength(successes: Sequence[float], trials: Sequence[float],
                             lo: float = 1.0, hi: float = 1000.0) -> float:
    """Prior strength m of a Beta prior on per-group rates, by the method of moments.

    With group rates p_g = s_g / t_g (groups with t_g > 0), their mean mu and variance V,
    and the binomial noise E = mean_g mu (1 - mu) / t_g, the spread of the true rates is
    tau^2 = V - E; a Beta prior with that mean and variance has m = mu (1 - mu) / tau^2 - 1.
    No spread beyond noise (tau^2 <= 0) or fewer than two groups pool fully: ``hi``. The
    result is clamped to [lo, hi].
    """
    rates = [(s / t, t) for s, t in zip(successes, trials) if t > 0]
    if len(rates) < 2:
        return hi
    mu = sum(p for p, _ in rates) / len(rates)
    if mu <= 0 or mu >= 1:
        return hi
    var = sum((p - mu) ** 2 for p, _ in rates) / (len(rates) - 1)
    noise = sum(mu * (1 - mu) / t for _, t in rates) / len(rates)
    spread = var - noise
    if spread <= 0:
        return hi
    return min(hi, max(lo, mu * (1 - mu) / spread - 1))


@dataclass(frozen=True)
class _Columns:
    """Per-example columns, each [N]: top-1 hit, p(true), margin, top-1 confidence."""

    hit: Tensor
    true_p: Tensor
    margin: Tensor
    conf: Tensor

    def summary(self, name: str, mask: Tensor, prior: tuple[float | None, float | None] | None,
                m: float) -> GroupReliability:
        """Statistics over ``mask``; prior None: the rows are the overall split (no shrinkage)."""
        n, correct = int(mask.sum()), int(self.hit[mask].sum())
        prob_sum = float(self.true_p[mask].sum())
        acc = correct / n if n else None
        mean_p = prob_sum / n if n else None
        if prior is None:  # the overall row is its own prior
            prior = (acc or 0.0, mean_p or 0.0)
        return GroupReliability(
            name=str(name), n=n, correct=correct, true_prob_sum=prob_sum, accuracy=acc,
            mean_true_prob=mean_p,
            mean_margin=float(self.margin[mask].mean()) if n else None,
            ece=expected_calibration_error(self.conf[mask], self.hit[mask]) if n else None,
            shrunk_accuracy=(correct + m * prior[0]) / (n + m) if n + m else 0.0,
            shrunk_true_prob=(prob_sum + m * prior[1]) / (n + m) if n + m else 0.0)


def _checked(logits: Tensor, y: Tensor, group: Tensor, num_groups: int,
             prior_strength: float) -> tuple[Tensor, Tensor, Tensor]:
    problems = []
    if logits.ndim != 2 or logits.shape[0] != y.shape[0] or y.shape != group.shape:
        problems.append(f"teacher logits {tuple(logits.shape)}, labels {tuple(y.shape)} and "
                        f"groups {tuple(group.shape)} must be [N, C], [N] and [N]")
    elif len(y) == 0:
        problems.append("the holdout split is empty; set data.holdout_fraction > 0 or give "
                        "data.holdout_path")
    else:
        if int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
            problems.append(f"labels span [{int(y.min())}, {int(y.max())}] but the teacher "
                            f"has {logits.shape[1]} classes")
        if int(group.min()) < 0 or int(group.max()) >= num_groups:
            problems.append(f"group ids span [{int(group.min())}, {int(group.max())}] but "
                            f"{num_groups} group names were given")
    if not prior_strength >= 0:
        problems.append(f"prior_strength is {prior_strength}; it must be >= 0")
    if problems:
        raise InvalidInput(problems, "cannot profile the teacher")
    return logits.detach().cpu(), y.detach().cpu().long(), group.detach().cpu().long()
