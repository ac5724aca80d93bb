"""Where does the teacher term harm? A paired, cross-fitted comparison of two short runs.

The harm diagnosis shows that the teacher's own accuracy does not predict where distillation
lowers a subgroup below the one-hot student: a right but unsure teacher moves a whole rare
class onto its neighbours. So we measure the harm itself. Two short students are trained,
one with the distillation objective (``distilled``) and one with its label term alone
(``reference``, alpha 0), and compared example by example on data neither trained on:

- cross-fitting: the training split is cut into K class-stratified folds; for each fold the
  pair is trained on the other K - 1 and predicts the fold; every holdout example is
  predicted by the pair of fold (its index mod K). Every training and holdout example then
  counts once, so a tail class with 4 holdout images is judged on its training images too.
  ``folds: 1`` trains one pair on the whole training split and compares on holdout alone.
- paired counts per subgroup g: b_g (reference right, distilled wrong), c_g (the reverse).
- the teacher weight of g is the posterior probability that distillation is at least as
  good as the reference there. With theta_g the share of b among g's discordant pairs
  (theta_g <= 1/2: distillation at least as good),

      theta_g ~ Beta(b_g + m * p0 + 1/2, c_g + m * (1 - p0) + 1/2),   w_g = P(theta_g <= 1/2)

  p0 = sum b / sum (b + c) is the pooled rate, m the prior strength: estimated by the method
  of moments across subgroups (empirical Bayes, ``compression.reliability``) or fixed. The
  1/2 is Jeffreys' prior, so m = 0 is defined. A subgroup with few discordant pairs gets
  the pooled answer; one with many gets its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.reliability import beta_cdf, empirical_bayes_strength
from compression.spec import MitigationSpec

__all__ = ["PROBE_PARAMS", "ProbePlan", "HarmEvidence", "probe_param_problems", "probe_plan",
           "fold_ids", "subset", "paired_counts_by_group", "teacher_weights", "cross_fit",
           "rows_in_order", "weights_from_evidence"]

PROBE_PARAMS: dict[str, Any] = {"probe_folds": 3, "probe_epochs": 0,
                                "shrinkage": "empirical_bayes", "prior_strength": 10.0}
SHRINKAGE = ("empirical_bayes", "fixed")
_MAX_STRENGTH = 1000.0

# fit(role, spec, train split, fold) -> trained model; predict(model, split) -> classes [N]
Fit = Callable[[str, MitigationSpec, Split, int], nn.Module]
Predict = Callable[[nn.Module, Split], Tensor]


@dataclass(frozen=True)
class ProbePlan:
    """What to train: ``reference`` and ``distilled`` specs, K folds, epochs (0: as many as
    the student it is for: a short probe misses harm that needs the full schedule to show,
    e.g. a rare class the one-hot student learns only late). ``reference_holdout``: also
    train the reference on the whole training split and count its right answers on holdout
    per subgroup (the floors of ``compression.losses.reference_floor``)."""

    reference: MitigationSpec
    distilled: MitigationSpec
    folds: int
    epochs: int
    reference_holdout: bool = False


@dataclass(frozen=True)
class HarmEvidence:
    """Per-subgroup paired counts of the probe: n examples, b, c as in the module docstring."""

    group_names: tuple[str, ...]
    n: tuple[int, ...]
    b: tuple[int, ...]
    c: tuple[int, ...]
    folds: int
    runs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"split": "train out-of-fold + holdout" if self.folds > 1 else "holdout",
                "folds": self.folds, "runs_trained": self.runs,
                "seconds": round(self.seconds, 3),
                "groups": [{"name": g, "n": n, "b": b, "c": c}
                           for g, n, b, c in zip(self.group_names, self.n, self.b, self.c)]}


def probe_param_problems(params: dict[str, Any]) -> list[str]:
    problems = []
    if not 1 <= params["probe_folds"] <= 20:
        problems.append(f"probe_folds is {params['probe_folds']}; it must be in [1, 20] "
                        "(1: holdout only)")
    if not 0 <= params["probe_epochs"] <= 100_000:
        problems.append(f"probe_epochs is {params['probe_epochs']}; it must be in "
                        "[0, 100000] (0: as many as the student)")
    if params["shrinkage"] not in SHRINKAGE:
        problems.append(f"shrinkage is {params['shrinkage']!r}; use {' or '.join(SHRINKAGE)}")
    if not 0 <= params["prior_strength"] <= _MAX_STRENGTH:
        problems.append(f"prior_strength is {params['prior_strength']}; it must be in "
                        f"[0, {_MAX_STRENGTH:g}]")
    return [f"mitigation.params.{p}" for p in problems]


def probe_plan(spec: MitigationSpec, params: dict[str, Any]) -> ProbePlan:
    """The pair to compare for ``spec``: kd with its alpha, T and label term, and that label
    term alone (alpha 0): one_hot for ``ce``, the teacher-free rebalanced loss otherwise."""
    label_loss, tau = params["label_loss"], params["label_tau"]
    label = {} if label_loss == "ce" else {"label_loss": label_loss}
    if label_loss == "logit_adjusted":
        label["label_tau"] = tau
    distilled = MitigationSpec(name="kd", alpha=spec.alpha, temperature=spec.temperature,
                               params=label)
    reference = (MitigationSpec(name="one_hot") if label_loss == "ce" else
                 MitigationSpec(name="logit_adjusted", params={"tau": tau})
                 if label_loss == "logit_adjusted" else MitigationSpec(name=label_loss))
    return ProbePlan(reference, distilled, params["probe_folds"], params["probe_epochs"],
                     bool(params.get("reference_floor", False)))


def fold_ids(y: Tensor, folds: int, seed: int) -> Tensor:
    """[N] class ids -> [N] fold ids in [0, folds): within each class a seeded permutation
    dealt round-robin, so every fold holds about 1/folds of every class."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty(len(y), dtype=torch.int64)
    offset = 0  # continue the deal across classes so small classes do not all start at 0
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=gen)]
        out[idx] = (torch.arange(len(idx)) + offset) % folds
        offset += len(idx)
    return out


def subset(split: Split, mask: Tensor) -> Split:
    return Split(split.x[mask], split.y[mask], split.group[mask], split.layout)


def paired_counts_by_group(reference: Tensor, distilled: Tensor, y: Tensor, group: Tensor,
                           num_groups: int) -> tuple[Tensor, Tensor, Tensor]:
    """Predicted classes [N] of the two models, labels and group ids [N] -> n, b, c: [K]."""
    ref_ok, dis_ok = reference == y, distilled == y
    g = group.long()

    def count(mask: Tensor) -> Tensor:
        return torch.bincount(g[mask], minlength=num_groups)
    return (torch.bincount(g, minlength=num_groups), count(ref_ok & ~dis_ok),
            count(dis_ok & ~ref_ok))


def teacher_weights(b: Sequence[int], c: Sequence[int], shrinkage: str = "empirical_bayes",
                    prior_strength: float = 10.0) -> tuple[list[float], float, float]:
    """w_g = P(theta_g <= 1/2) (module docstring) -> (weights [K], p0, m)."""
    total_b, total = sum(b), sum(b) + sum(c)
    p0 = total_b / total if total else 0.5
    trials = [bi + ci for bi, ci in zip(b, c)]
    m = (empirical_bayes_strength(b, trials, lo=0.0, hi=_MAX_STRENGTH)
         if shrinkage == "empirical_bayes" else prior_strength)
    weights = [beta_cdf(0.5, bi + m * p0 + 0.5, ci + m * (1 - p0) + 0.5)
               for bi, ci in zip(b, c)]
    return weights, p0, m


def rows_in_order(rows: Sequence[dict[str, Any]], group_names: Sequence[str],
                  source: str) -> list[dict[str, Any]]:
    """The per-subgroup ``rows`` (each with a "name") in ``group_names`` order; InvalidInput
    naming ``source`` when a subgroup has none."""
    by_name = {row["name"]: row for row in rows}
    missing = [g for g in group_names if g not in by_name]
    if missing:
        raise InvalidInput(f"{source} has no counts for subgroups {missing}")
    return [by_name[g] for g in group_names]


def weights_from_evidence(evidence: dict[str, Any] | None, group_names: Sequence[str],
                          shrinkage: str, prior_strength: float) -> tuple[Tensor, dict]:
    """Teacher weights [K] in ``group_names`` order from ``HarmEvidence.to_dict()`` and a
    summary for the report. Missing evidence is a pipeline bug made visible as InvalidInput."""
    if evidence is None:
        raise InvalidInput("this mitigation needs the harm probe's paired counts; the pipeline "
                           "runs it (LossContext.harm_evidence) before building the loss")
    rows = rows_in_order(evidence["groups"], group_names, "the harm probe")
    b = [int(row["b"]) for row in rows]
    c = [int(row["c"]) for row in rows]
    weights, p0, m = teacher_weights(b, c, shrinkage, prior_strength)
    return torch.tensor(weights), {"pooled_rate": p0, "prior_strength": m, "weights": weights}


def cross_fit(plan: ProbePlan, train: Split, holdout: Split, num_groups: int,
              group_names: Sequence[str], seed: int, fit: Fit, predict: Predict) -> HarmEvidence:
    """Train the pair per fold and count, per subgroup, where their answers differ."""
    start = time.perf_counter()
    k = plan.folds
    train_fold = fold_ids(train.y, k, seed) if k > 1 else torch.zeros(len(train), dtype=torch.int64)
    holdout_fold = torch.arange(len(holdout)) % k
    preds: dict[str, list[Tensor]] = {"reference": [], "distilled": []}
    labels, groups = [], []
    for fold in range(k):
        fit_on = subset(train, train_fold != fold) if k > 1 else train
        scored = [subset(holdout, holdout_fold == fold)]
        if k > 1:
            scored.append(subset(train, train_fold == fold))
        for role, spec in (("reference", plan.reference), ("distilled", plan.distilled)):
            model = fit(role, spec, fit_on, fold)
            preds[role] += [predict(model, s).cpu() for s in scored if len(s)]
        labels += [s.y.cpu() for s in scored if len(s)]
        groups += [s.group.cpu() for s in scored if len(s)]
    n, b, c = paired_counts_by_group(torch.cat(preds["reference"]), torch.cat(preds["distilled"]),
                                     torch.cat(labels), torch.cat(groups), num_groups)
    return HarmEvidence(tuple(group_names), tuple(n.tolist()), tuple(b.tolist()),
                        tuple(c.tolist()), k, 2 * k, time.perf_counter() - start)
