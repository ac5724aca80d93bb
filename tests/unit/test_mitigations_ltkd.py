"""LTKD: the exact split of the KD KL, its corrections, and the class partition it uses."""

import math

import pytest
import torch
import torch.nn.functional as F

from compression.data.dataset import Dataset, Split
from compression.errors import InvalidInput
from compression.losses import LossContext, build_loss, kd_kl, kd_loss
from compression.losses.ltkd import (batch_group_prior, class_partition,
                                     frequency_partition, kl_split, ltkd_kl)
from compression.spec import MitigationSpec

torch.manual_seed(0)
S = torch.randn(6, 3)
T = 2 * torch.randn(6, 3)
Y = torch.tensor([0, 1, 2, 0, 1, 2])
G = torch.tensor([0, 0, 1, 1, 0, 1])


def value(name: str, ctx: LossContext, **spec) -> float:
    return build_loss(MitigationSpec(name=name, **spec), ctx)(S, Y, T, G).item()


@pytest.mark.parametrize("table", [[0, 0, 0, 1, 1, 2], [0, 1, 2, 3, 4, 5], [0] * 6,
                                   [1, 0, 1, 0, 1, 0]])
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_the_split_sums_back_to_the_full_kl(table, temperature):
    torch.manual_seed(1)
    s, t = torch.randn(16, 6), 3 * torch.randn(16, 6)
    t[0, 2] = float("-inf")  # a class the teacher rules out: 0 * log 0 = 0, not NaN
    k = max(table) + 1
    p_group, log_q_group, within = kl_split(s, t, torch.tensor(table), k, temperature)
    cross = F.kl_div(log_q_group, p_group, reduction="none").sum(1)  # [B]
    whole = kd_kl(s, t, temperature) / temperature ** 2
    assert torch.allclose(cross + (p_group * within).sum(1), whole, atol=1e-6)
    assert torch.allclose(p_group.sum(1), torch.ones(16), atol=1e-6)
    assert (within >= -1e-7).all() and torch.isfinite(within).all()
    # the same through ltkd_kl with both corrections off
    plain = ltkd_kl(s, t, torch.tensor(table), k, temperature, group_prior=None, reweight=False)
    assert torch.allclose(plain, kd_kl(s, t, temperature), atol=1e-5)


def test_batch_group_prior_is_the_mean_teacher_mass():
    p_group = torch.tensor([[0.9, 0.1], [0.5, 0.5]])
    assert batch_group_prior(p_group).tolist() == pytest.approx([0.7, 0.3])


def test_reweighting_counts_every_group_equally():
    # within-group term weighted 1/K, not p_G: hand check against kl_split's pieces
    table = torch.tensor([0, 0, 1])
    p_group, log_q_group, within = kl_split(S, T, table, 2, 2.0)
    cross = F.kl_div(log_q_group, p_group, reduction="none").sum(1)
    expected = 4.0 * (cross + within.mean(1))
    got = ltkd_kl(S, T, table, 2, 2.0, group_prior=None, reweight=True)
    assert torch.allclose(got, expected, atol=1e-6)


def ltkd_context(counts=(6, 3, 1), class_groups=None) -> LossContext:
    return LossContext(3, 2, ("a", "b"), list(counts), class_groups=class_groups)


def test_context_from_dataset_finds_class_partitions():
    x = torch.zeros(6, 1, 2, 2, dtype=torch.uint8)
    y = torch.tensor([0, 0, 1, 1, 2, 2])

    def ctx(group):
        split = Split(x, y, torch.tensor(group))
        return LossContext.from_dataset(Dataset(split, split, split, ("p", "q", "r"),
                                                ("g0", "g1", "g2")))

    assert ctx([0, 0, 1, 1, 2, 2]).class_groups == (0, 1, 2)
    assert ctx([2, 2, 0, 0, 2, 2]).class_groups == (2, 0, 2)
    assert ctx([0, 1, 1, 1, 2, 2]).class_groups is None  # class 0 spans two groups
    assert ctx([0, 0, 1, 1, 2, 2]).holdout is not None


def test_ltkd_without_corrections_is_kd():
    got = value("ltkd", ltkd_context(), alpha=0.7, temperature=2.0,
                params={"rebalance": False, "reweight": False})
    assert got == pytest.approx(kd_loss(S, T, Y, 0.7, 2.0).item(), rel=1e-6)


def test_ltkd_with_one_group_is_kd_whatever_the_flags():
    got = value("ltkd", ltkd_context(), alpha=1.0, temperature=2.0, params={"num_groups": 1})
    assert got == pytest.approx(kd_loss(S, T, Y, 1.0, 2.0).item(), rel=1e-6)


def test_ltkd_rebalanced_cross_group_hand_value():
    # Two one-class groups: no within-group term. Teacher (0.5, 0.5) over prior (3/4, 1/4)
    # rebalances to (1/4, 3/4); the student at T = 1 is (e, 1) / (e + 1).
    loss = build_loss(MitigationSpec(name="ltkd", alpha=1.0, temperature=1.0,
                                     params={"num_groups": 2, "partition": "frequency",
                                             "prior": "train"}),
                      LossContext(2, 1, ("all",), [3, 1]))
    got = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]), torch.zeros(1, 2),
               torch.tensor([0])).item()
    q0 = math.e / (math.e + 1)
    expected = 0.25 * math.log(0.25 / q0) + 0.75 * math.log(0.75 / (1 - q0))
    assert got == pytest.approx(expected, rel=1e-6)


def test_ltkd_batch_prior_makes_identical_teacher_rows_uniform_over_groups():
    # Every row has the same teacher: dividing by the batch mean makes p~_G uniform.
    loss = build_loss(MitigationSpec(name="ltkd", alpha=1.0, temperature=1.0,
                                     params={"num_groups": 2, "prior": "batch",
                                             "partition": "frequency"}),
                      LossContext(2, 1, ("all",), [3, 1]))
    student = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    got = loss(student, torch.tensor([0, 1]), torch.tensor([[3.0, 0.0]] * 2),
               torch.tensor([0, 0])).item()
    q = student.softmax(1)
    expected = (0.5 * (0.5 / q).log()).sum(1).mean().item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_ltkd_partition_auto_follows_coarse_subgroups_else_frequency():
    assert frequency_partition([5, 50, 1, 20], 3) == [2, 0, 2, 1]  # C=4: 1 head, 1 med, 2 tail
    assert frequency_partition([1, 2, 3, 4, 5], 2) == [1, 1, 1, 0, 0]
    coarse = LossContext(3, 2, ("x", "y"), [6, 3, 1], class_groups=(1, 1, 0))
    assert class_partition(coarse)[0].tolist() == [1, 1, 0]
    assert class_partition(coarse, "frequency")[0].tolist() == [0, 1, 2]
    per_class = LossContext(3, 3, ("p", "q", "r"), [1, 6, 3], class_groups=(0, 1, 2))
    table, k = class_partition(per_class)
    assert table.tolist() == [2, 0, 1] and k == 3
    assert class_partition(per_class, "subgroups")[0].tolist() == [0, 1, 2]
    # empty groups are dropped: a 2-class job has no medium group
    assert class_partition(LossContext(2, 1, ("g",), [5, 1]))[1] == 2


def test_ltkd_param_problems_are_listed():
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="ltkd", params={"num_groups": 0, "prior": "x",
                                                       "partition": "subgroups"}),
                   ltkd_context())
    assert len(err.value.problems) == 3
