"""Teacher-free rebalancing losses and the label term of the distillation objectives:
values worked by hand on a 3-class example, and the wiring of ``label_loss`` everywhere."""

import math

import pytest
import torch

from compression.errors import InvalidInput
from compression.losses import (LossContext, accepted_params, build_loss, check_mitigation,
                                kd_kl, requirements)
from compression.losses.rebalance import (balanced_softmax_ce, class_balanced_ce,
                                          class_balanced_weights, log_prior, logit_adjusted_ce)
from compression.spec import MitigationSpec
from tests.unit.test_mitigations import context, reliability

# Three classes with training counts 6, 3, 1: pi = (0.6, 0.3, 0.1).
COUNTS = (6, 3, 1)
# Example 0: all-zero logits, label 2 (the rare class). Example 1: logits (1, 0, 0), label 0.
Z = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
Y = torch.tensor([2, 0])
G = torch.tensor([1, 0])
E = math.e
# Logit-adjusted, tau 1: softmax(z + log pi).
#   ex 0: softmax(log pi) = pi, so the loss is -log 0.1 = log 10.
#   ex 1: probabilities proportional to (0.6 e, 0.3, 0.1): -log(0.6e / (0.6e + 0.4)).
LA_TAU1 = [math.log(10), math.log(1 + 0.4 / (0.6 * E))]
# tau 2: softmax(z + 2 log pi) is proportional to pi^2 * e^z.
#   ex 0: pi^2 = (0.36, 0.09, 0.01), so -log(0.01 / 0.46) = log 46.
#   ex 1: -log(0.36e / (0.36e + 0.10)).
LA_TAU2 = [math.log(46), math.log(1 + 0.10 / (0.36 * E))]
# Plain CE: ex 0 log 3; ex 1 -log(e / (e + 2)).
CE = [math.log(3), math.log(1 + 2 / E)]
# Class-balanced, beta 0.5: e_c = 0.5 / (1 - 0.5^n_c) = 32/63, 4/7 = 36/63, 1 = 63/63;
# scaled to sum to C = 3: w = 3 * (32, 36, 63) / 131.
CB_W = [96 / 131, 108 / 131, 189 / 131]


def ctx3(**kw) -> LossContext:
    return context(counts=COUNTS, **kw)


def test_log_prior_reads_zero_counts_as_one():
    assert log_prior(COUNTS).tolist() == pytest.approx([math.log(p) for p in (0.6, 0.3, 0.1)])
    assert log_prior([3, 0]).exp().tolist() == pytest.approx([0.75, 0.25])


def test_logit_adjusted_hand_values():
    pi = log_prior(COUNTS)
    assert logit_adjusted_ce(Z, Y, pi, 1.0).tolist() == pytest.approx(LA_TAU1, rel=1e-6)
    assert logit_adjusted_ce(Z, Y, pi, 2.0).tolist() == pytest.approx(LA_TAU2, rel=1e-6)
    assert logit_adjusted_ce(Z, Y, pi, 0.0).tolist() == pytest.approx(CE, rel=1e-6)


def test_balanced_softmax_hand_value_equals_logit_adjustment_at_tau_one():
    # ex 0: n_y / sum n = 1 / 10; ex 1: 6e / (6e + 3 + 1)
    assert balanced_softmax_ce(Z, Y, COUNTS).tolist() == pytest.approx(LA_TAU1, rel=1e-6)
    z = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    y = torch.arange(16) % 3
    assert torch.allclose(balanced_softmax_ce(z, y, COUNTS),
                          logit_adjusted_ce(z, y, log_prior(COUNTS), 1.0), atol=1e-6)


def test_class_balanced_weights_hand_values_and_limits():
    assert class_balanced_weights(COUNTS, 0.5).tolist() == pytest.approx(CB_W, rel=1e-6)
    assert class_balanced_weights(COUNTS, 0.0).tolist() == pytest.approx([1.0, 1.0, 1.0])
    # beta -> 1: inverse frequency (1/6, 1/3, 1) scaled to sum 3 = (1/3, 2/3, 2)
    near_one = class_balanced_weights(COUNTS, 1 - 1e-9).tolist()
    assert near_one == pytest.approx([1 / 3, 2 / 3, 2.0], rel=1e-5)
    w = class_balanced_weights(COUNTS, 0.5)
    assert class_balanced_ce(Z, Y, w).tolist() == pytest.approx(
        [CB_W[2] * CE[0], CB_W[0] * CE[1]], rel=1e-6)


@pytest.mark.parametrize("name,params,expected", [
    ("logit_adjusted", {}, LA_TAU1), ("logit_adjusted", {"tau": 2.0}, LA_TAU2),
    ("balanced_softmax", {}, LA_TAU1),
    ("class_balanced", {"beta": 0.5}, [CB_W[2] * CE[0], CB_W[0] * CE[1]]),
    ("group_dro_one_hot", {"beta": 0.0}, CE),
    ("group_dro_one_hot", {"beta": 0.0, "label_loss": "logit_adjusted"}, LA_TAU1),
])
def test_registered_teacher_free_objectives_average_the_batch(name, params, expected):
    loss = build_loss(MitigationSpec(name=name, params=params), ctx3())
    assert loss.needs_teacher is False
    assert not requirements(MitigationSpec(name=name)).needs_teacher
    got = loss(Z, Y, None, G).item()  # no teacher logits at all
    assert got == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_group_dro_one_hot_weights_the_groups_like_group_dro():
    # beta 1, uniform weights over 2 groups, one example per group: the mean of the two
    dro = build_loss(MitigationSpec(name="group_dro_one_hot", alpha=0.9,
                                    params={"beta": 1.0}), ctx3())
    assert dro(Z, Y, None, G).item() == pytest.approx(0.5 * CE[0] + 0.5 * CE[1], rel=1e-6)
    with_teacher = build_loss(MitigationSpec(name="group_dro", alpha=0.0,
                                             params={"beta": 1.0}), ctx3())
    assert with_teacher(Z, Y, 3 * Z, G).item() == pytest.approx(dro(Z, Y, None, G).item())
    assert dro.name == "group_dro_one_hot" and with_teacher.name == "group_dro"


@pytest.mark.parametrize("name,params", [
    ("kd", {}), ("adaptive_alpha", {}), ("adaptive_alpha", {"per_example": True}),
    ("adaptive_margin", {"tau": 0.0}), ("group_dro", {"beta": 0.0}), ("ltkd", {}),
])
@pytest.mark.parametrize("label_loss,tau,expected", [
    ("ce", 1.0, CE), ("logit_adjusted", 1.0, LA_TAU1), ("logit_adjusted", 2.0, LA_TAU2),
    ("balanced_softmax", 1.0, LA_TAU1)])
def test_label_loss_is_the_label_term_of_every_distillation_objective(name, params, label_loss,
                                                                      tau, expected):
    # alpha 0 leaves the label term alone; the mean of the two examples, worked above
    spec = MitigationSpec(name=name, alpha=0.0,
                          params={**params, "label_loss": label_loss, "label_tau": tau})
    got = build_loss(spec, ctx3())(Z, Y, torch.randn(2, 3), G).item()
    assert got == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_kd_mixes_the_adjusted_label_term_with_the_kl():
    teacher = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    spec = MitigationSpec(name="kd", alpha=0.75, temperature=2.0,
                          params={"label_loss": "logit_adjusted", "label_tau": 2.0})
    got = build_loss(spec, ctx3())(Z, Y, teacher, G).item()
    kl = kd_kl(Z, teacher, 2.0).tolist()
    expected = sum(0.25 * la + 0.75 * k for la, k in zip(LA_TAU2, kl)) / 2
    assert got == pytest.approx(expected, rel=1e-6)


def test_adaptive_margin_shifts_the_logits_before_the_label_term():
    # reliability 1 everywhere: m = tau * (1 - r) = 0, so only the label term's shift acts
    ctx = ctx3(classes=(1.0, 1.0, 1.0))
    spec = MitigationSpec(name="adaptive_margin", alpha=0.0,
                          params={"tau": 5.0, "label_loss": "balanced_softmax"})
    assert build_loss(spec, ctx)(Z, Y, 3 * Z, G).item() == pytest.approx(sum(LA_TAU1) / 2)


@pytest.mark.parametrize("name,params,named", [
    ("kd", {"label_loss": "focal"}, "label_loss"),
    ("kd", {"label_tau": 2.0}, "label_tau"),  # ignored with label_loss ce: refused
    ("group_dro", {"label_loss": "logit_adjusted", "label_tau": -1.0}, "label_tau"),
    ("ltkd", {"label_loss": "balanced_softmax", "label_tau": 0.5}, "label_tau"),
    ("adaptive_margin", {"prior_tau": 1.0, "label_loss": "logit_adjusted"}, "prior_tau"),
    ("adaptive_alpha", {"label_loss": 3}, "label_loss"),
    ("logit_adjusted", {"tau": -0.5}, "tau"), ("logit_adjusted", {"tau": 101.0}, "tau"),
    ("class_balanced", {"beta": 1.0}, "beta"), ("class_balanced", {"beta": -0.1}, "beta"),
    ("group_dro_one_hot", {"eta": -1.0}, "eta"),
])
def test_params_are_checked_without_data(name, params, named):
    with pytest.raises(InvalidInput) as err:
        check_mitigation(MitigationSpec(name=name, params=params))
    assert err.value.problems[0].startswith(f"mitigation.params.{named}")


def test_accepted_params_and_defaults():
    assert accepted_params("logit_adjusted") == {"tau": 1.0}
    assert accepted_params("balanced_softmax") == {}
    assert accepted_params("class_balanced") == {"beta": 0.999}
    for name in ("kd", "adaptive_alpha", "adaptive_margin", "group_dro", "group_dro_one_hot",
                 "ltkd"):
        assert accepted_params(name)["label_loss"] == "ce", name
    assert "label_loss" not in accepted_params("teacher_calibration")
    check_mitigation(MitigationSpec(name="kd", params={"label_loss": "logit_adjusted",
                                                       "label_tau": 2}))


def test_group_dro_one_hot_needs_a_holdout():
    bare = LossContext(3, 2, ("a", "b"), list(COUNTS),
                       teacher_reliability=reliability({"a": 1, "b": 1}, [1, 1, 1]))
    with pytest.raises(InvalidInput, match="group_dro_one_hot updates its weights"):
        build_loss(MitigationSpec(name="group_dro_one_hot"), bare)
