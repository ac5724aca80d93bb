"""paired_alpha, paired_dro and balanced_teacher: values by hand, and their invariants."""

import pytest
import torch
import torch.nn.functional as F

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.losses import LossContext, build_loss, cross_entropy, kd_kl, kd_loss
from compression.losses.balanced_teacher import balanced_nll, fit_balanced
from compression.losses.registry import requirements
from compression.reliability import beta_cdf
from compression.spec import MitigationSpec

torch.manual_seed(0)
S = torch.randn(6, 3)
T = 2 * torch.randn(6, 3)
Y = torch.tensor([0, 1, 2, 0, 1, 2])
G = torch.tensor([0, 0, 1, 1, 0, 1])
# group a: distillation shown harmless (c >> b); group b: shown harmful (b >> c)
EVIDENCE = {"groups": [{"name": "a", "n": 50, "b": 0, "c": 12},
                       {"name": "b", "n": 50, "b": 12, "c": 0}]}


def holdout(n: int = 9) -> Split:
    return Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n) % 3,
                 torch.arange(n) % 2)


def context(evidence=EVIDENCE, **kw) -> LossContext:
    return LossContext(num_classes=3, num_groups=2, group_names=("a", "b"),
                       train_class_counts=[6, 3, 1], holdout=holdout(),
                       harm_evidence=evidence, **kw)


def spec(name: str, alpha: float = 0.9, **params) -> MitigationSpec:
    return MitigationSpec(name=name, alpha=alpha, temperature=2.0,
                          params={"shrinkage": "fixed", "prior_strength": 0.0, **params})


def test_paired_alpha_by_hand():
    loss = build_loss(spec("paired_alpha"), context())
    w_a = beta_cdf(0.5, 0.5, 12.5)  # Jeffreys, b=0, c=12: near 1
    w_b = beta_cdf(0.5, 12.5, 0.5)  # b=12, c=0: near 0
    alpha = 0.9 * torch.tensor([w_a, w_b])[G]
    ce = F.cross_entropy(S, Y, reduction="none")
    expected = ((1 - alpha) * ce + alpha * kd_kl(S, T, 2.0)).mean()
    assert loss(S, Y, T, G).item() == pytest.approx(expected.item(), rel=1e-6)
    state = loss.state_dict()
    assert state["alpha_by_group"]["a"] == pytest.approx(0.9 * w_a, rel=1e-6)
    assert state["alpha_by_group"]["b"] < 1e-3 and state["harm_evidence"] == EVIDENCE


def test_paired_alpha_limits_are_kd_and_one_hot():
    harmless = {"groups": [{"name": g, "n": 900, "b": 0, "c": 900} for g in "ab"]}
    kd = kd_loss(S, T, Y, 0.9, 2.0).item()
    assert build_loss(spec("paired_alpha"), context(harmless))(S, Y, T, G).item() == \
        pytest.approx(kd, rel=1e-5)
    assert build_loss(spec("paired_alpha", alpha=0.0), context())(S, Y, T, G).item() == \
        pytest.approx(cross_entropy(S, Y).item(), rel=1e-6)


def test_paired_alpha_needs_the_probe_and_checks_its_params():
    with pytest.raises(InvalidInput, match="harm probe"):
        build_loss(spec("paired_alpha"), context(None))
    with pytest.raises(InvalidInput) as err:
        build_loss(spec("paired_alpha", probe_folds=0, shrinkage="vibes"), context())
    assert len(err.value.problems) == 2
    needs = requirements(MitigationSpec(name="paired_dro"))
    assert needs.harm_probe and needs.needs_teacher and not needs.teacher_holdout_logits


def test_paired_dro_uses_the_group_alphas_and_checkpoints_its_facts():
    loss = build_loss(spec("paired_dro", beta=0.0), context())
    paired = build_loss(spec("paired_alpha"), context())
    assert loss(S, Y, T, G).item() == pytest.approx(paired(S, Y, T, G).item(), rel=1e-6)
    state = loss.state_dict()
    assert state["probe"]["alpha_by_group"] == paired.state_dict()["alpha_by_group"]
    fresh = build_loss(spec("paired_dro", beta=0.0), context())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weights, loss.weights)


def test_balanced_nll_weighs_every_class_alike():
    z = torch.zeros(4, 2, dtype=torch.float64)
    z[3, 1] = 2.0  # the one class-1 example: NLL log(1 + e^-2)
    y = torch.tensor([0, 0, 0, 1])
    assert balanced_nll(z, y).item() == pytest.approx(
        (torch.log(torch.tensor(2.0)) + torch.log1p(torch.exp(torch.tensor(-2.0)))).item() / 2)


def test_balanced_fit_removes_a_prior_the_teacher_learnt():
    # labels drawn from softmax(l), classes balanced by symmetry; a teacher that learnt
    # l + log pi (a long-tailed prior): the balanced fit finds T_cal and tau near 1
    gen = torch.Generator().manual_seed(0)
    counts = [80, 15, 5]
    true_logits = 2.0 * torch.randn(2000, 3, generator=gen, dtype=torch.float64)
    y = torch.multinomial(true_logits.softmax(1), 1, generator=gen).squeeze(1)
    log_pi = torch.tensor(counts, dtype=torch.float64).div(100).log()
    fitted = fit_balanced(true_logits + log_pi, y, counts, class_bias=False)
    assert fitted.tau == pytest.approx(1.0, abs=0.1)
    assert fitted.temperature == pytest.approx(1.0, abs=0.1)
    shifted = fitted.apply(true_logits + log_pi).double()
    assert balanced_nll(shifted, y) < balanced_nll(true_logits + log_pi, y) - 0.1


def test_balanced_teacher_is_kd_on_the_refitted_teacher():
    logits = torch.randn(9, 3)
    ctx = context(None, teacher_holdout_logits=logits)
    loss = build_loss(MitigationSpec(name="balanced_teacher", alpha=0.5, temperature=2.0), ctx)
    fitted = fit_balanced(logits, holdout().y, [6, 3, 1])
    assert loss(S, Y, T, G).item() == pytest.approx(
        kd_loss(S, fitted.apply(T), Y, 0.5, 2.0).item(), rel=1e-5)
    assert set(loss.state_dict()["calibration"]) == {"temperature", "tau", "bias"}
    assert requirements(MitigationSpec(name="balanced_teacher")).teacher_holdout_logits
    with pytest.raises(InvalidInput, match="holdout logits"):
        build_loss(MitigationSpec(name="balanced_teacher"), context(None))


def test_masking_leaves_harmed_classes_to_the_label_term():
    from compression.losses.paired_alpha import within_trusted_kl
    every = torch.ones(3, dtype=torch.bool)
    assert torch.allclose(within_trusted_kl(S, T, every, 2.0), kd_kl(S, T, 2.0), atol=1e-5)
    # by hand on one example, U = {0, 1}: p_U * KL of the renormalised pairs, times T^2
    s, t = S[:1], T[:1]
    p, q = F.softmax(t / 2, -1)[0], F.softmax(s / 2, -1)[0]
    pu, qu = p[:2] / p[:2].sum(), q[:2] / q[:2].sum()
    hand = 4 * p[:2].sum() * (pu * (pu / qu).log()).sum()
    trusted = torch.tensor([True, True, False])
    assert within_trusted_kl(s, t, trusted, 2.0).item() == pytest.approx(hand.item(), rel=1e-5)
    z = S.clone().requires_grad_(True)
    within_trusted_kl(z, T, trusted, 2.0).sum().backward()
    assert torch.all(z.grad[:, 2] == 0) and z.grad[:, :2].abs().sum() > 0
    # subgroup b (harm shown) holds class 2: its logit only hears the labels
    ctx = context(class_groups=(0, 0, 1))
    loss = build_loss(spec("paired_alpha", mask_classes=True), ctx)
    assert loss.state_dict()["trusted_classes"] == [0, 1]
    z = S.clone().requires_grad_(True)
    loss(z, Y, T, G).backward()
    alone = S.clone().requires_grad_(True)
    F.cross_entropy(alone, Y, reduction="none").mul(
        1 - 0.9 * torch.tensor([beta_cdf(0.5, 0.5, 12.5), beta_cdf(0.5, 12.5, 0.5)])[G]
    ).mean().backward()
    assert torch.allclose(z.grad[:, 2], alone.grad[:, 2], atol=1e-6)
    with pytest.raises(InvalidInput, match="whole classes"):
        build_loss(spec("paired_alpha", mask_classes=True), context())


def test_share_weights_by_hand():
    from compression.losses.paired_alpha import share_weights
    from compression.losses.per_example import kd_per_example, per_example_ce
    z, y = torch.zeros(2, 2), torch.tensor([0, 0])
    t = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    alpha = torch.tensor([1.0, 0.0])  # the first keeps the teacher, the second lost it
    v = share_weights(z, lambda s: kd_per_example(s, t, y, alpha, 4.0),
                      lambda s: per_example_ce(s, y), alpha, 1.0)
    # taught row: |T (p_T - q_T)| = 4 (0.7311 - 0.5) sqrt 2 = 1.3071 against |p - y| = 0.7071
    assert v.tolist() == pytest.approx([1.0, 1.8485], abs=1e-4)
    assert share_weights(z, lambda s: per_example_ce(s, y), lambda s: per_example_ce(s, y),
                         torch.zeros(2), 1.0).tolist() == [1.0, 1.0]  # no teacher anywhere


def test_paired_alpha_match_share_by_hand():
    loss = build_loss(spec("paired_alpha", match_share=True), context())
    w = torch.tensor([beta_cdf(0.5, 0.5, 12.5), beta_cdf(0.5, 12.5, 0.5)])
    alpha = 0.9 * w[G]
    ce = F.cross_entropy(S, Y, reduction="none")
    per = (1 - alpha) * ce + alpha * kd_kl(S, T, 2.0)
    p, onehot = torch.softmax(S, 1), F.one_hot(Y, 3).float()
    p_t, q_t = torch.softmax(S / 2.0, 1), torch.softmax(T / 2.0, 1)
    d_loss = (1 - alpha)[:, None] * (p - onehot) + alpha[:, None] * 2.0 * (p_t - q_t)
    r = d_loss.norm(dim=1).mean() / (p - onehot).norm(dim=1).mean()
    v = 1 + (r - 1) * (1 - alpha / 0.9)
    expected = (v * per).sum() / v.sum()
    assert loss(S, Y, T, G).item() == pytest.approx(expected.item(), rel=1e-5)
    # b (teacher taken away) weighs r, a (teacher kept) 1; r is 0.957 on these logits
    assert v[G == 1].tolist() == pytest.approx([float(r)] * 3, rel=1e-3)
    assert v[G == 0].tolist() == pytest.approx([1.0] * 3, abs=1e-3)
    assert float(r) == pytest.approx(0.957, abs=1e-3)
    harmless = {"groups": [{"name": g, "n": 900, "b": 0, "c": 900} for g in "ab"]}
    assert build_loss(spec("paired_alpha", match_share=True), context(harmless))(
        S, Y, T, G).item() == pytest.approx(kd_loss(S, T, Y, 0.9, 2.0).item(), rel=1e-4)
