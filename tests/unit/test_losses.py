import math

import pytest
import torch

from compression.losses import cross_entropy, kd_kl, kd_loss


def _softmax(xs):
    exps = [math.exp(x) for x in xs]
    return [e / sum(exps) for e in exps]


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


STUDENT = torch.tensor([[1.0, 0.0]])
TEACHER = torch.tensor([[0.0, 1.0]])


def test_cross_entropy_matches_hand_value_and_averages_the_batch():
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1])
    # -log softmax: label 0 -> log(1 + e^-1); label 1 -> log(1 + e^1)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert cross_entropy(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_kd_kl_matches_hand_value_at_t2():
    # T = 2: student softmax([0.5, 0]), teacher softmax([0, 0.5])
    s = _softmax([0.5, 0.0])
    t = _softmax([0.0, 0.5])
    expected = 4 * _kl(t, s)  # T^2 * KL(teacher || student)
    out = kd_kl(STUDENT, TEACHER, temperature=2.0)
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-5)
    # closed form: the log-ratio is +-0.5 and s0 - t0 = tanh(0.25), so T^2 KL = 2 tanh(0.25)
    assert expected == pytest.approx(2 * math.tanh(0.25), rel=1e-12)
    assert expected == pytest.approx(0.4898373, rel=1e-6)


def test_kd_kl_is_per_example_nonnegative_and_zero_when_equal():
    torch.manual_seed(0)
    s, t = torch.randn(16, 5), torch.randn(16, 5)
    out = kd_kl(s, t, temperature=3.0)
    assert out.shape == (16,)
    assert (out >= 0).all() and (out > 0).any()
    assert kd_kl(s, s.clone(), temperature=3.0).abs().max().item() < 1e-6


def test_kd_kl_gradient_is_t_times_softmax_difference():
    # d/dz [T^2 KL(t || softmax(z/T))] = T * (softmax(z/T) - t)
    z = STUDENT.clone().requires_grad_(True)
    kd_kl(z, TEACHER, temperature=2.0).sum().backward()
    s, t = _softmax([0.5, 0.0]), _softmax([0.0, 0.5])
    expected = [2 * (s[0] - t[0]), 2 * (s[1] - t[1])]
    assert z.grad[0].tolist() == pytest.approx(expected, rel=1e-5)


def test_kd_kl_ignores_classes_the_teacher_gives_zero_probability():
    teacher = torch.tensor([[0.0, float("-inf")]])
    out = kd_kl(torch.tensor([[0.0, 0.0]]), teacher, temperature=1.0)
    # teacher is one-hot on class 0: KL = log(1 / 0.5)
    assert out.item() == pytest.approx(math.log(2), rel=1e-6)


def test_kd_loss_mixes_ce_and_kl():
    labels = torch.tensor([0])
    ce = math.log(1 + math.exp(-1))
    kl_t2 = 4 * _kl(_softmax([0.0, 0.5]), _softmax([0.5, 0.0]))
    at = {a: kd_loss(STUDENT, TEACHER, labels, alpha=a, temperature=2.0).item()
          for a in (0.0, 0.3, 1.0)}
    assert at[0.0] == cross_entropy(STUDENT, labels).item()
    assert at[0.0] == pytest.approx(ce, rel=1e-6)
    assert at[1.0] == pytest.approx(kl_t2, rel=1e-5)
    assert at[0.3] == pytest.approx(0.7 * ce + 0.3 * kl_t2, rel=1e-5)


def test_kd_loss_averages_kl_over_the_batch():
    student = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    teacher = torch.tensor([[0.0, 1.0], [0.0, 0.0]])  # second row: KL 0
    out = kd_loss(student, teacher, torch.tensor([0, 0]), alpha=1.0, temperature=2.0)
    assert out.item() == pytest.approx(4 * _kl(_softmax([0, 0.5]), _softmax([0.5, 0])) / 2,
                                       rel=1e-5)


def test_half_precision_logits_give_a_float32_loss():
    out = kd_loss(STUDENT.bfloat16(), TEACHER.bfloat16(), torch.tensor([0]), 0.5, 2.0)
    assert out.dtype == torch.float32 and math.isfinite(out.item())
