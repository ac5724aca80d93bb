"""Mitigation objectives: hand-computed values on tiny tensors and the invariants that tie
them to KD and one-hot training."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.losses import (
    LossContext, accepted_params, build_loss, check_mitigation, cross_entropy, kd_kl, kd_loss,
    known_losses, requirements,
)
from compression.losses.adaptive_alpha import group_alphas, teacher_margin
from compression.losses.adaptive_margin import class_margins
from compression.spec import MitigationSpec

MITIGATIONS = ["adaptive_alpha", "adaptive_margin", "balanced_teacher", "group_dro", "ltkd",
               "paired_alpha", "paired_dro", "teacher_calibration"]
REBALANCING = ["balanced_softmax", "class_balanced", "group_dro_one_hot", "logit_adjusted"]


def reliability(groups: dict[str, float], classes: list[float]) -> dict:
    """A teacher profile in ``TeacherReliability.to_dict()`` form with chosen shrunk values."""
    def rows(pairs):
        return [{"name": n, "shrunk_accuracy": r, "shrunk_true_prob": r / 2} for n, r in pairs]
    return {"groups": rows(groups.items()),
            "classes": rows((str(c), r) for c, r in enumerate(classes))}


def holdout(n: int = 8) -> Split:
    return Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n) % 3,
                 torch.arange(n) % 2)


def context(groups=None, classes=(0.9, 0.9, 0.9), counts=(6, 3, 1), **kw) -> LossContext:
    groups = groups or {"a": 0.8, "b": 0.8}
    return LossContext(num_classes=3, num_groups=2, group_names=tuple(groups),
                       train_class_counts=list(counts),
                       teacher_reliability=reliability(groups, list(classes)),
                       holdout=holdout(), **kw)


torch.manual_seed(0)
S = torch.randn(6, 3)
T = 2 * torch.randn(6, 3)
Y = torch.tensor([0, 1, 2, 0, 1, 2])
G = torch.tensor([0, 0, 1, 1, 0, 1])


def value(name: str, ctx: LossContext | None = None, **spec) -> float:
    loss = build_loss(MitigationSpec(name=name, **spec), ctx or context())
    return loss(S, Y, T, G).item()


# --- registry -----------------------------------------------------------------------------

def test_every_mitigation_and_auto_are_known_and_unknown_names_list_them():
    assert known_losses() == sorted(["one_hot", "kd", "auto", *MITIGATIONS, *REBALANCING])
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="dro"), context())
    text = str(err.value)
    assert "kd, one_hot" in text and "auto" in text
    assert all(name in text for name in MITIGATIONS + REBALANCING)
    assert "group_dro_one_hot, logit_adjusted (teacher-free rebalancing)" in text


def test_auto_is_no_single_loss():
    spec = MitigationSpec(name="auto", candidates=(MitigationSpec(name="kd"),))
    with pytest.raises(InvalidInput, match="choose_mitigation"):
        build_loss(spec, context())
    assert accepted_params("auto") == {}


def test_params_have_defaults_and_are_checked():
    assert accepted_params("group_dro") == {"beta": 0.5, "eta": 1.0, "eval_batch_size": 512,
                                            "label_loss": "ce", "label_tau": 1.0}
    assert accepted_params("ltkd")["num_groups"] == 3
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="adaptive_alpha",
                                  params={"reliability": "vibes", "gate": 2.0}), context())
    assert len(err.value.problems) == 2 and "vibes" in str(err.value)


def test_check_mitigation_lists_every_candidate_problem():
    spec = MitigationSpec(name="auto", candidates=(
        MitigationSpec(name="kd"), MitigationSpec(name="nope"),
        MitigationSpec(name="ltkd", params={"beta": 1.0})))
    with pytest.raises(InvalidInput) as err:
        check_mitigation(spec)
    assert len(err.value.problems) == 2
    assert err.value.problems[0].startswith("mitigation.candidates[1]:")
    assert err.value.problems[1].startswith("mitigation.candidates[2]: mitigation.params.beta")
    check_mitigation(MitigationSpec(name="group_dro", params={"beta": 1}))  # int for float: ok


@pytest.mark.parametrize("name,params,named", [
    ("group_dro", {"beta": 2.0}, "beta"), ("group_dro", {"eta": float("inf")}, "eta"),
    ("adaptive_alpha", {"gate": float("nan")}, "gate"), ("adaptive_margin", {"tau": -1.0}, "tau"),
    ("ltkd", {"num_groups": 0}, "num_groups"), ("ltkd", {"partition": "x"}, "partition")])
def test_param_values_are_checked_without_data(name, params, named):
    with pytest.raises(InvalidInput) as err:
        check_mitigation(MitigationSpec(name=name, params=params))
    assert err.value.problems[0].startswith(f"mitigation.params.{named}")


def test_requirements_say_what_to_prepare():
    assert requirements(MitigationSpec(name="one_hot")).needs_teacher is False
    assert requirements(MitigationSpec(name="kd")).calibrate_teacher is False
    assert requirements(MitigationSpec(name="kd", calibrate_teacher=True)).calibrate_teacher
    assert requirements(MitigationSpec(name="teacher_calibration")).calibrate_teacher
    assert requirements(MitigationSpec(name="adaptive_margin")).needs_reliability
    auto = MitigationSpec(name="auto", candidates=(MitigationSpec(name="one_hot"),
                                                   MitigationSpec(name="adaptive_alpha")))
    r = requirements(auto)
    assert r.needs_teacher and r.needs_reliability and not r.calibrate_teacher


@pytest.mark.parametrize("name,params", [
    ("adaptive_alpha", {}), ("adaptive_alpha", {"per_example": True}),
    ("adaptive_margin", {"tau": 0.0}), ("group_dro", {"beta": 0.0}), ("ltkd", {}),
    ("teacher_calibration", {}),
])
def test_alpha_zero_is_one_hot(name, params):
    ctx = context({"a": 0.9, "b": 0.3})
    assert value(name, ctx, alpha=0.0, params=params) == pytest.approx(
        cross_entropy(S, Y).item(), rel=1e-6)


def test_teacher_calibration_loss_is_kd():
    assert value("teacher_calibration", alpha=0.7, temperature=3.0) == pytest.approx(
        kd_loss(S, T, Y, 0.7, 3.0).item(), rel=1e-6)


# --- adaptive_alpha -----------------------------------------------------------------------

def test_group_alphas_scale_by_relative_reliability():
    r = torch.tensor([0.9, 0.45])
    assert group_alphas(0.8, r).tolist() == pytest.approx([0.8, 0.4])
    assert group_alphas(0.8, r, sharpness=2.0).tolist() == pytest.approx([0.8, 0.2])
    assert group_alphas(0.8, torch.zeros(2)).tolist() == pytest.approx([0.8, 0.8])


@pytest.mark.parametrize("measure", ["accuracy", "prob"])
def test_adaptive_alpha_with_equal_reliability_is_kd(measure):
    got = value("adaptive_alpha", context({"a": 0.7, "b": 0.7}), alpha=0.6, temperature=2.0,
                params={"reliability": measure, "sharpness": 3.0})
    assert got == pytest.approx(kd_loss(S, T, Y, 0.6, 2.0).item(), rel=1e-6)


def test_adaptive_alpha_hand_value_per_group():
    # group a: r = 0.9 -> alpha 0.8; group b: r = 0.45 -> alpha 0.4
    ctx = context({"a": 0.9, "b": 0.45})
    ce = F.cross_entropy(S, Y, reduction="none")
    kl = kd_kl(S, T, 2.0)
    a = torch.tensor([0.8, 0.4])[G]
    expected = ((1 - a) * ce + a * kl).mean().item()
    assert value("adaptive_alpha", ctx, alpha=0.8, temperature=2.0) == pytest.approx(expected,
                                                                                    rel=1e-6)


def test_teacher_margin_hand_value():
    # softmax([2, 0]) = (e^2, 1) / (e^2 + 1): the gap is tanh(1)
    m = teacher_margin(torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]))
    assert m.tolist() == pytest.approx([math.tanh(1), -math.tanh(1)], rel=1e-6)


def test_per_example_gate_scales_alpha_where_the_teacher_is_wrong():
    student = torch.tensor([[0.5, 0.0], [0.0, 0.3]])
    teacher = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # right on example 0, wrong on 1
    labels, groups = torch.tensor([0, 1]), torch.tensor([0, 0])
    ctx = LossContext(2, 1, ("all",), [1, 1], teacher_reliability=reliability({"all": 1.0},
                                                                              [1.0, 1.0]))
    spec = MitigationSpec(name="adaptive_alpha", alpha=0.8, temperature=1.0,
                          params={"per_example": True, "gate": 0.25, "margin": 0.0})
    got = build_loss(spec, ctx)(student, labels, teacher, groups).item()
    ce = F.cross_entropy(student, labels, reduction="none")
    kl = kd_kl(student, teacher, 1.0)
    a = torch.tensor([0.8, 0.2])
    assert got == pytest.approx(((1 - a) * ce + a * kl).mean().item(), rel=1e-6)
    # a margin above tanh(1) gates both examples
    strict = MitigationSpec(name="adaptive_alpha", alpha=0.8, temperature=1.0,
                            params={"per_example": True, "gate": 0.25, "margin": 0.8})
    both = build_loss(strict, ctx)(student, labels, teacher, groups).item()
    assert both == pytest.approx(((0.8 * ce + 0.2 * kl).mean()).item(), rel=1e-6)


def test_adaptive_alpha_needs_a_matching_reliability_profile():
    bare = LossContext(3, 2, ("a", "b"), [1, 1, 1])
    with pytest.raises(InvalidInput, match="profile_teacher"):
        build_loss(MitigationSpec(name="adaptive_alpha"), bare)
    other = LossContext(3, 2, ("a", "b"), [1, 1, 1],
                        teacher_reliability=reliability({"a": 1.0, "z": 1.0}, [1, 1, 1]))
    with pytest.raises(InvalidInput, match="lacks"):
        build_loss(MitigationSpec(name="adaptive_alpha"), other)


# --- adaptive_margin ----------------------------------------------------------------------

def test_class_margins_hand_values():
    r = torch.tensor([1.0, 0.5])
    assert class_margins(r, [3, 1], tau=2.0).tolist() == pytest.approx([0.0, 1.0])
    with_prior = class_margins(r, [3, 1], tau=2.0, prior_tau=1.0).tolist()
    assert with_prior == pytest.approx([-math.log(0.75), 1.0 - math.log(0.25)], rel=1e-6)


def test_adaptive_margin_hand_value():
    # classes 0, 1 with r = 1, 0.5 and tau 2: margins (0, 1); logits (1, 0) label 0 become
    # (1, -1): CE = log(1 + e^-2). Label 1: (0, -1) after a margin of 1 on logits (1, 1).
    ctx = LossContext(2, 1, ("all",), [1, 1],
                      teacher_reliability=reliability({"all": 1.0}, [1.0, 0.5]))
    loss = build_loss(MitigationSpec(name="adaptive_margin", alpha=0.0,
                                     params={"tau": 2.0}), ctx)
    student = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    got = loss(student, torch.tensor([0, 1]), student, torch.tensor([0, 0])).item()
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(1))) / 2
    assert got == pytest.approx(expected, rel=1e-6)


def test_adaptive_margin_without_margins_is_kd_and_mixes_with_alpha():
    ctx = context(classes=(1.0, 0.4, 0.2))
    assert value("adaptive_margin", ctx, alpha=0.5, params={"tau": 0.0}) == pytest.approx(
        kd_loss(S, T, Y, 0.5, 4.0).item(), rel=1e-6)
    m = torch.tensor([0.0, 0.6, 0.8])
    expected = 0.7 * F.cross_entropy(S - m, Y) + 0.3 * kd_kl(S, T, 4.0).mean()
    assert value("adaptive_margin", ctx, alpha=0.3) == pytest.approx(expected.item(), rel=1e-6)


def test_adaptive_margin_pushes_up_the_logit_of_an_unreliable_class():
    ctx = context(classes=(1.0, 1.0, 0.0))
    z = torch.zeros(1, 3, requires_grad=True)
    build_loss(MitigationSpec(name="adaptive_margin", alpha=0.0), ctx)(
        z, torch.tensor([2]), torch.zeros(1, 3), torch.tensor([0])).backward()
    plain = torch.zeros(1, 3, requires_grad=True)
    F.cross_entropy(plain, torch.tensor([2])).backward()
    assert z.grad[0, 2] < plain.grad[0, 2] < 0  # a stronger pull up on class 2


def test_every_mitigation_gives_a_finite_differentiable_loss():
    probe = {"groups": [{"name": "a", "n": 3, "b": 1, "c": 0},
                        {"name": "b", "n": 3, "b": 0, "c": 2}]}
    ctx = context({"a": 0.9, "b": 0.4}, classes=(0.9, 0.5, 0.2), harm_evidence=probe,
                  teacher_holdout_logits=torch.randn(8, 3))
    for name in MITIGATIONS:
        s = S.clone().requires_grad_(True)
        out = build_loss(MitigationSpec(name=name), ctx)(s, Y, T, G)
        out.backward()
        assert out.ndim == 0 and math.isfinite(out.item()), name
        assert s.grad.abs().sum() > 0, name
    json.dumps(accepted_params("adaptive_alpha"))
