"""Teacher profiling on holdout: hand-computed rates, shrinkage, ECE and lookups."""

import json
import math

import pytest
import torch

from compression.errors import InvalidInput
from compression.reliability import (expected_calibration_error, profile_teacher,
                                     reliability_values)

LN3, LN9 = math.log(3), math.log(9)
# p = (.75, .25), (.75, .25), (.1, .9), (.5, .5)
LOGITS = torch.tensor([[LN3, 0.0], [LN3, 0.0], [0.0, LN9], [0.0, 0.0]])
Y = torch.tensor([0, 1, 1, 0])  # right, wrong, right, right (a tie goes to class 0)
GROUP = torch.tensor([0, 0, 1, 1])


def profile(prior_strength: float = 2.0):
    return profile_teacher(LOGITS, Y, GROUP, ("a", "b", "empty"), prior_strength,
                           class_names=("shirt", "coat"))


def test_overall_and_group_rates_by_hand():
    rel = profile()
    o = rel.overall
    assert (o.n, o.correct) == (4, 3) and o.accuracy == 0.75
    assert o.true_prob_sum == pytest.approx(0.75 + 0.25 + 0.9 + 0.5)
    assert o.mean_true_prob == pytest.approx(0.6)
    a, b, empty = rel.groups
    assert (a.n, a.correct, a.accuracy) == (2, 1, 0.5)
    assert a.mean_true_prob == pytest.approx(0.5)
    assert a.mean_margin == pytest.approx(0.0)  # +0.5 and -0.5
    assert b.mean_margin == pytest.approx((0.8 + 0.0) / 2)
    assert (empty.n, empty.accuracy, empty.mean_margin, empty.ece) == (0, None, None, None)


def test_shrinkage_toward_the_overall_rate_by_hand():
    a, b, empty = profile(prior_strength=2.0).groups
    # (correct + m * overall) / (n + m) with m = 2, overall accuracy 0.75, true prob 0.6
    assert a.shrunk_accuracy == pytest.approx((1 + 2 * 0.75) / 4)
    assert b.shrunk_accuracy == pytest.approx((2 + 2 * 0.75) / 4)
    assert a.shrunk_true_prob == pytest.approx((1.0 + 2 * 0.6) / 4)
    assert b.shrunk_true_prob == pytest.approx((1.4 + 2 * 0.6) / 4)
    assert (empty.shrunk_accuracy, empty.shrunk_true_prob) == pytest.approx((0.75, 0.6))
    raw = profile(prior_strength=0.0).groups[0]
    assert raw.shrunk_accuracy == raw.accuracy and raw.shrunk_true_prob == pytest.approx(0.5)


def test_per_class_rows_and_names():
    shirt, coat = profile().classes
    assert (shirt.name, shirt.n, shirt.correct) == ("shirt", 2, 2)
    assert (coat.name, coat.n, coat.correct) == ("coat", 2, 1)
    unnamed = profile_teacher(LOGITS, Y, GROUP, ("a", "b"))
    assert [c.name for c in unnamed.classes] == ["0", "1"]


def test_group_ece_by_hand():
    a, b, _ = profile().groups
    assert a.ece == pytest.approx(0.25)  # both at confidence .75, half right
    assert b.ece == pytest.approx(0.5 * 0.1 + 0.5 * 0.5)  # (.9, right), (.5, right)


def test_ece_bins_are_half_open_on_the_left():
    conf = torch.tensor([0.95, 0.95, 0.3])
    hit = torch.tensor([True, False, False])
    assert expected_calibration_error(conf, hit) == pytest.approx(0.45 * 2 / 3 + 0.3 / 3)
    # 1/15 and 1/15 + tiny fall in different bins: (0, 1/15] and (1/15, 2/15]
    edge = torch.tensor([1 / 15, 1 / 15 + 1e-6], dtype=torch.float64)
    split_bins = expected_calibration_error(edge, torch.tensor([True, False]))
    assert split_bins == pytest.approx(((1 - 1 / 15) + (1 / 15 + 1e-6)) / 2)
    assert expected_calibration_error(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) == 0.0


def test_to_dict_is_json_with_the_counts_and_feeds_the_lookup():
    data = json.loads(json.dumps(profile().to_dict()))
    assert data["split"] == "holdout" and data["prior_strength"] == 2.0
    assert data["ece_bins"] == 15
    assert data["groups"][0]["n"] == 2 and data["groups"][0]["correct"] == 1
    assert data["groups"][0]["true_prob_sum"] == pytest.approx(1.0)
    assert reliability_values(data, "groups", "accuracy", names=("b", "a")) == pytest.approx(
        [0.875, 0.625])
    assert reliability_values(data, "classes", "prob", count=2) == pytest.approx(
        [(1.25 + 1.2) / 4, (1.15 + 1.2) / 4])
    with pytest.raises(InvalidInput, match="3"):
        reliability_values(data, "classes", "prob", count=3)
    with pytest.raises(InvalidInput, match="lacks"):
        reliability_values(data, "groups", "prob", names=("zzz",))
    with pytest.raises(InvalidInput, match="no usable"):
        reliability_values({"groups": [{"name": "a"}]}, "groups", "accuracy", names=("a",))


def test_bad_inputs_are_listed():
    with pytest.raises(InvalidInput) as err:
        profile_teacher(LOGITS, Y, torch.tensor([0, 0, 1, 5]), ("a", "b"), prior_strength=-1)
    assert len(err.value.problems) == 2 and "group ids" in str(err.value)
    with pytest.raises(InvalidInput, match="empty"):
        profile_teacher(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long),
                        torch.zeros(0, dtype=torch.long), ("a",))
    with pytest.raises(InvalidInput, match="class names"):
        profile_teacher(LOGITS, Y, GROUP, ("a", "b"), class_names=("one",))
