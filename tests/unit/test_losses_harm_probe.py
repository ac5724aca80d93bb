"""The harm probe: Beta tail, empirical-Bayes strength, teacher weights, cross-fitting."""

import pytest
import torch
from torch import nn

from compression.data.dataset import Split
from compression.losses.harm_probe import (ProbePlan, cross_fit, fold_ids,
                                           paired_counts_by_group, probe_plan, teacher_weights,
                                           weights_from_evidence)
from compression.losses.registry import accepted_params, harm_probe_plan
from compression.reliability import beta_cdf, empirical_bayes_strength
from compression.spec import MitigationSpec


@pytest.mark.parametrize("x,a,b,expected", [
    (0.5, 1.0, 1.0, 0.5),                      # uniform
    (0.5, 2.0, 5.0, 57 / 64),                  # P(Bin(6, 1/2) >= 2) = 1 - 7/64
    (0.3, 1.0, 3.0, 1 - 0.7 ** 3),             # Beta(1, b): 1 - (1 - x)^b
    (0.2, 4.0, 1.0, 0.2 ** 4),                 # Beta(a, 1): x^a
    (0.9, 4.0, 1.0, 0.9 ** 4),                 # the other side of the continued fraction
])
def test_beta_cdf_matches_closed_forms(x, a, b, expected):
    assert beta_cdf(x, a, b) == pytest.approx(expected, abs=1e-12)


def test_beta_cdf_is_symmetric_and_bounded():
    assert beta_cdf(0.5, 3.3, 3.3) == pytest.approx(0.5, abs=1e-12)
    assert beta_cdf(0.4, 2.5, 7.0) == pytest.approx(1 - beta_cdf(0.6, 7.0, 2.5), abs=1e-12)
    assert beta_cdf(0.0, 2, 2) == 0.0 and beta_cdf(1.0, 2, 2) == 1.0
    with pytest.raises(ValueError):
        beta_cdf(0.5, 0.0, 1.0)


def test_empirical_bayes_strength_by_hand():
    # rates 0.1, 0.5, 0.9 of 10 trials: mu 0.5, V 0.16, E 0.025, tau^2 0.135
    assert empirical_bayes_strength([1, 5, 9], [10, 10, 10], lo=0.0) == pytest.approx(
        0.25 / 0.135 - 1)
    assert empirical_bayes_strength([1, 5, 9], [10, 10, 10]) == 1.0  # clamped to lo
    # no spread beyond binomial noise: pool fully
    assert empirical_bayes_strength([5, 5, 5], [10, 10, 10], hi=500) == 500
    assert empirical_bayes_strength([3], [10], hi=7) == 7  # one group cannot say
    # a group with no trials says nothing: rates 0.1, 0.5, mu 0.3, V 0.08, E 0.021
    assert empirical_bayes_strength([1, 5, 9], [10, 10, 0]) == pytest.approx(
        0.21 / (0.08 - 0.021) - 1)


def test_teacher_weights_by_hand():
    # fixed m = 0: Jeffreys only. b=0, c=2: Beta(1/2, 5/2) below 1/2; b=2, c=0 the mirror.
    w, p0, m = teacher_weights([0, 2, 0], [2, 0, 0], shrinkage="fixed", prior_strength=0.0)
    assert p0 == 0.5 and m == 0.0
    assert w[0] == pytest.approx(beta_cdf(0.5, 0.5, 2.5)) and w[0] > 0.9
    assert w[1] == pytest.approx(1 - w[0], abs=1e-12)
    assert w[2] == pytest.approx(0.5)  # no discordant pair, symmetric prior
    # a strong prior pulls an empty subgroup to the pooled answer: harm everywhere else
    w, p0, _ = teacher_weights([9, 9, 0], [1, 1, 0], shrinkage="fixed", prior_strength=50.0)
    assert p0 == 0.9 and w[2] < 1e-6


def test_weights_follow_the_evidence_in_group_order():
    evidence = {"groups": [{"name": "tail", "n": 9, "b": 8, "c": 0},
                           {"name": "head", "n": 90, "b": 1, "c": 9}]}
    w, facts = weights_from_evidence(evidence, ["head", "tail"], "fixed", 2.0)
    assert w[0] > 0.9 and w[1] < 0.05
    assert facts["pooled_rate"] == pytest.approx(9 / 18)


def test_fold_ids_are_stratified_and_seeded():
    y = torch.tensor([0] * 9 + [1] * 4 + [2] * 2)
    folds = fold_ids(y, 3, seed=1)
    for c in range(3):
        counts = torch.bincount(folds[y == c], minlength=3)
        assert int(counts.max() - counts.min()) <= 1
    assert torch.equal(folds, fold_ids(y, 3, seed=1))
    assert int(torch.bincount(folds, minlength=3).min()) == 5  # the deal continues over classes


def test_paired_counts_by_group():
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    ref = torch.tensor([0, 1, 0, 0, 2, 2])   # right, right, wrong, right, wrong, right
    dis = torch.tensor([1, 1, 2, 0, 2, 0])   # wrong, right, right, right, wrong, wrong
    n, b, c = paired_counts_by_group(ref, dis, y, torch.tensor([0, 0, 0, 1, 1, 1]), 2)
    assert n.tolist() == [3, 3] and b.tolist() == [1, 1] and c.tolist() == [1, 0]


class Memo(nn.Module):
    """A 'model' that answers right on the examples it was fitted on, and class 0 elsewhere
    (distilled) or its label (reference): it records which ids it saw."""

    def __init__(self, seen: set[int], distilled: bool):
        super().__init__()
        self.seen, self.distilled = seen, distilled


def test_cross_fit_scores_every_example_once_by_models_that_never_saw_it():
    train = Split(torch.arange(12).view(12, 1, 1, 1).to(torch.uint8), torch.arange(12) % 2,
                  torch.arange(12) % 2)
    holdout = Split(torch.arange(100, 104).view(4, 1, 1, 1).to(torch.uint8),
                    torch.tensor([0, 1, 1, 1]), torch.tensor([0, 1, 1, 1]))
    fitted = []

    def fit(role, spec, split, fold):
        fitted.append((role, spec.name, fold, len(split)))
        return Memo({int(v) for v in split.x.flatten()}, role == "distilled")

    def predict(model, split):
        ids = split.x.flatten().long()
        assert not ({int(i) for i in ids} & model.seen)  # out of fold
        return torch.zeros_like(split.y) if model.distilled else split.y.clone()

    plan = ProbePlan(MitigationSpec(name="one_hot"), MitigationSpec(name="kd"), 3, 0)
    ev = cross_fit(plan, train, holdout, 2, ("even", "odd"), 0, fit, predict)
    assert [f[:3] for f in fitted] == [(r, n, k) for k in range(3)
                                      for r, n in (("reference", "one_hot"),
                                                   ("distilled", "kd"))]
    assert all(f[3] == 8 for f in fitted)  # each pair trains on the other two folds
    assert ev.n == (7, 9) and ev.c == (0, 0)
    assert ev.b == (0, 9)  # distilled says 0: wrong on every class-1 example
    assert ev.to_dict()["runs_trained"] == 6


def test_probe_plan_compares_against_the_label_term_alone():
    spec = MitigationSpec(name="paired_alpha", alpha=0.8, temperature=2.0,
                          params={"label_loss": "logit_adjusted", "label_tau": 0.5})
    plan = harm_probe_plan(spec)
    assert plan.reference == MitigationSpec(name="logit_adjusted", params={"tau": 0.5})
    assert plan.distilled == MitigationSpec(name="kd", alpha=0.8, temperature=2.0, params={
        "label_loss": "logit_adjusted", "label_tau": 0.5})
    plain = probe_plan(MitigationSpec(name="paired_alpha"), accepted_params("paired_alpha"))
    assert plain.reference.name == "one_hot" and plain.distilled.params == {}
    assert harm_probe_plan(MitigationSpec(name="kd")) is None
    assert plain.folds == 3 and plain.epochs == 0
