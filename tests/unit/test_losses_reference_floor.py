"""paired_alpha's reference floor: the dual step, the weighting, its state and its inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.losses import LossContext, build_loss, kd_kl
from compression.losses.harm_probe import probe_plan
from compression.losses.reference_floor import (ReferenceFloorLoss, floor_step,
                                                floors_from_evidence, holdout_parts,
                                                out_of_fold, reference_counts,
                                                reference_counts_by_half)
from compression.losses.registry import accepted_params, fits_holdout_half, other_half
from compression.reliability import beta_cdf
from compression.spec import MitigationSpec

PROBE = {"groups": [{"name": "a", "n": 50, "b": 0, "c": 12},
                    {"name": "b", "n": 50, "b": 12, "c": 0}]}
REFERENCE = {"halves": [{"groups": [{"name": "a", "n": 80, "correct": 60},
                                    {"name": "b", "n": 20, "correct": 10}]},
                        {"groups": [{"name": "a", "n": 80, "correct": 40},
                                    {"name": "b", "n": 20, "correct": 20}]}]}


def test_floor_step_by_hand():
    floors = torch.tensor([0.8, 0.6, 0.9], dtype=torch.float64)
    # the student trails overall by 0.8 - (70 + 30) / 150 = 0.1333: a subgroup is pushed
    # only for trailing more; the one with no holdout example keeps its multiplier
    step = floor_step(torch.tensor([0.5, 0.2, 1.0], dtype=torch.float64), floors, 0.8,
                      torch.tensor([0.7, 0.6, 0.95], dtype=torch.float64),
                      torch.tensor([100.0, 50.0, 0.0], dtype=torch.float64), 10.0, 8.0)
    assert step.tolist() == pytest.approx([0.5 - 10 * 0.03333, 0.0, 1.0], abs=1e-4)
    # caught up overall (0.85 >= 0.8): every shortfall counts, clipped at max_weight - 1
    step = floor_step(torch.zeros(3, dtype=torch.float64), floors, 0.8,
                      torch.tensor([0.7, 0.9, 0.95], dtype=torch.float64),
                      torch.full((3,), 100.0, dtype=torch.float64), 10.0, 1.5)
    assert step.tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_reference_counts_and_floors_by_hand():
    counts = reference_counts(torch.tensor([0, 1, 1, 2, 0]), torch.tensor([0, 1, 2, 2, 1]),
                              torch.tensor([0, 0, 1, 1, 2]), ("a", "b", "c"))
    assert counts == {"groups": [{"name": "a", "n": 2, "correct": 2},
                                 {"name": "b", "n": 2, "correct": 1},
                                 {"name": "c", "n": 1, "correct": 0}]}
    evidence = {"reference_holdout": {"halves": [REFERENCE["halves"][0], counts]}}
    floors, n, overall = floors_from_evidence(evidence, ("c", "a"), half=1)
    assert floors.tolist() == [0.0, 1.0] and n.tolist() == [1.0, 2.0]
    assert overall == pytest.approx(3 / 5)
    floors, n, overall = floors_from_evidence(evidence, ("b", "a"))  # half 0
    assert floors.tolist() == [0.5, 0.75] and overall == pytest.approx(0.7)
    with pytest.raises(InvalidInput, match="holdout accuracy"):
        floors_from_evidence(PROBE, ("a", "b"))
    with pytest.raises(InvalidInput, match=r"\['d'\]"):
        floors_from_evidence(evidence, ("a", "d"), half=1)


class Constant(nn.Module):
    """Predicts class 0 for every input."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([5.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 2)


def floor_loss(eta: float = 10.0) -> ReferenceFloorLoss:
    # holdout: group 0 all class 0 (the constant model is right), group 1 half class 1
    holdout = Split(torch.zeros(8, 1, 2, 2, dtype=torch.uint8),
                    torch.tensor([0, 0, 0, 0, 0, 1, 0, 1]), torch.tensor([0] * 4 + [1] * 4))

    def per_example(s, y, t, g):
        return F.cross_entropy(s, y, reduction="none")
    return ReferenceFloorLoss("floor", per_example, floors=torch.tensor([0.75, 0.75]),
                              floor_n=torch.tensor([4.0, 4.0]), overall_floor=0.75,
                              holdout=holdout, eta=eta, max_weight=8.0)


def test_floor_loss_weights_each_subgroup_by_its_multiplier_and_checkpoints_them():
    loss = floor_loss()
    s, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    g, t = torch.tensor([0, 1, 1, 0]), torch.zeros(4, 2)
    ce = F.cross_entropy(s, y, reduction="none")
    assert loss(s, y, t, g).item() == pytest.approx(ce.mean().item(), rel=1e-6)
    loss.on_epoch_end(Constant())
    # accuracy a 1.0, b 0.5, overall 0.75 (no overall gap): a falls to 0, b rises 10 * 0.25
    assert loss.multipliers.tolist() == pytest.approx([0.0, 2.5])
    assert loss.holdout_accuracy == pytest.approx([1.0, 0.5])
    v = torch.tensor([1.0, 3.5, 3.5, 1.0])
    assert loss(s, y, t, g).item() == pytest.approx(((v * ce).sum() / v.sum()).item(), rel=1e-6)
    fresh = floor_loss()
    fresh.load_state_dict(loss.state_dict())
    assert fresh.multipliers.tolist() == [0.0, 2.5] and fresh.updates == 1
    assert loss.state_dict()["floors"]["overall"] == 0.75
    with pytest.raises(InvalidInput, match="floor multipliers"):
        fresh.load_state_dict({"weights": torch.zeros(2)})
    with pytest.raises(ValueError, match="teacher_logits"):
        loss(s, y, None, g)


def context(evidence) -> LossContext:
    holdout = Split(torch.zeros(9, 1, 2, 2, dtype=torch.uint8), torch.arange(9) % 3,
                    torch.arange(9) % 2)
    return LossContext(num_classes=3, num_groups=2, group_names=("a", "b"),
                       train_class_counts=[6, 3, 1], holdout=holdout, harm_evidence=evidence)


def spec(**params) -> MitigationSpec:
    return MitigationSpec(name="paired_alpha", alpha=0.9, temperature=2.0, params={
        "shrinkage": "fixed", "prior_strength": 0.0, "reference_floor": True, **params})


def test_paired_alpha_with_a_floor_starts_as_paired_alpha_and_needs_its_reference():
    torch.manual_seed(0)
    s, t = torch.randn(6, 3), 2 * torch.randn(6, 3)
    y, g = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 0, 1, 1, 0, 1])
    loss = build_loss(spec(), context({**PROBE, "reference_holdout": REFERENCE}))
    alpha = 0.9 * torch.tensor([beta_cdf(0.5, 0.5, 12.5), beta_cdf(0.5, 12.5, 0.5)])[g]
    ce = F.cross_entropy(s, y, reduction="none")
    expected = ((1 - alpha) * ce + alpha * kd_kl(s, t, 2.0)).mean()
    assert loss(s, y, t, g).item() == pytest.approx(expected.item(), rel=1e-5)
    state = loss.state_dict()
    assert state["floors"]["by_group"] == pytest.approx([0.75, 0.5])
    assert state["floors"]["overall"] == pytest.approx(0.7) and "alpha_by_group" in state
    assert state["floors"]["holdout_half"] == 0
    # fitted to the other half: that half's floors, and its examples to measure
    other = build_loss(spec(floor_half=1), context({**PROBE, "reference_holdout": REFERENCE}))
    assert other.state_dict()["floors"]["by_group"] == pytest.approx([0.5, 1.0])
    assert other.state_dict()["floors"]["holdout_half"] == 1
    assert len(other.holdout) + len(loss.holdout) == 9
    with pytest.raises(InvalidInput, match="holdout accuracy"):
        build_loss(spec(), context(PROBE))
    with pytest.raises(InvalidInput) as err:
        build_loss(spec(match_share=True, floor_eta=0.0, floor_half=2), context(PROBE))
    assert len(err.value.problems) == 3


def test_the_probe_trains_the_whole_split_reference_only_for_a_floor():
    params = accepted_params("paired_alpha")
    assert probe_plan(spec(), {**params, "reference_floor": True}).reference_holdout
    assert not probe_plan(spec(), params).reference_holdout


def test_the_floor_trains_against_one_half_of_each_cell_and_class_of_the_holdout():
    y = torch.tensor([0, 1] * 10 + [0] * 7)
    group = torch.tensor([0] * 20 + [1] * 7)
    holdout = Split(torch.zeros(27, 1, 2, 2, dtype=torch.uint8), y, group)
    fit, unseen = holdout_parts(holdout)
    assert not (fit & unseen).any() and (fit | unseen).all()
    # cells x classes of 10, 10 and 7 examples: 5, 5 and 3 to the fit half
    assert [int((fit & (group == g) & (y == c)).sum()) for g, c in [(0, 0), (0, 1), (1, 0)]] \
        == [5, 5, 3]
    # the cut depends on labels and groups alone, so the probe and the judge see the same one
    other = Split(torch.ones(27, 1, 2, 2, dtype=torch.uint8), y.clone(), group.clone())
    assert torch.equal(holdout_parts(other)[0], fit)
    loss = ReferenceFloorLoss("floor", lambda s, y, t, g: s.sum(1), floors=torch.ones(2),
                              floor_n=torch.ones(2), overall_floor=1.0, holdout=holdout,
                              eta=1.0, max_weight=2.0)
    assert torch.equal(loss.holdout.y, y[fit]) and torch.equal(loss.holdout.group, group[fit])


def test_out_of_fold_answers_each_half_by_the_floor_fitted_to_the_other():
    y = torch.tensor([0, 0, 1, 1, 0, 1])
    holdout = Split(torch.zeros(6, 1, 2, 2, dtype=torch.uint8), y, torch.zeros(6).long())
    half_0, half_1 = holdout_parts(holdout)
    fitted_to_0, fitted_to_1 = torch.full((6,), 7), torch.full((6,), 9)
    answers = out_of_fold(holdout, fitted_to_0, fitted_to_1)
    assert answers[half_0].eq(9).all() and answers[half_1].eq(7).all()
    assert int(half_0.sum()) == 2  # one of each class's 3: half 0 takes the smaller part
    # the reference's counts on each half, from its answers on the whole holdout
    counts = reference_counts_by_half(y.clone(), holdout, ("all",))["halves"]
    assert [h["groups"][0]["n"] for h in counts] == [2, 4]
    assert [h["groups"][0]["correct"] for h in counts] == [2, 4]


def test_the_other_half_of_a_floor_flips_its_half_and_nothing_else():
    floor = spec()
    twin = other_half(floor)
    assert twin.params == {**floor.params, "floor_half": 1} and twin.alpha == floor.alpha
    assert other_half(twin).params["floor_half"] == 0
    assert fits_holdout_half(twin) and not fits_holdout_half(spec(reference_floor=False))
    with pytest.raises(ValueError, match="does not train against a holdout half"):
        other_half(spec(reference_floor=False))
