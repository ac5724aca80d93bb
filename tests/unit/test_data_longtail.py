import numpy as np
import pytest

from compression.data import long_tail_counts
from compression.data.longtail import long_tail_indices
from compression.errors import InvalidInput


@pytest.mark.parametrize("args, expected", [
    ((100, 3, "exp", 100.0), [100, 10, 1]),
    # CIFAR-10-LT with imbalance 100: the published per-class counts.
    ((5000, 10, "exp", 100.0), [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]),
    ((100, 5, "exp", 1.0), [100] * 5),
    ((100, 4, "step", 10.0), [100, 100, 10, 10]),
    ((100, 5, "step", 10.0), [100, 100, 100, 10, 10]),  # ceil(C/2) head classes
    ((7, 3, "step", 2.0), [7, 7, 3]),
    ((100, 3, "none", 50.0), [100, 100, 100]),
    ((10, 3, "exp", 1000.0), [10, 1, 1]),  # floor(10 / sqrt(1000)) = 0 -> kept at 1
    ((10, 2, "step", 1000.0), [10, 1]),
    ((42, 1, "exp", 100.0), [42]),
])
def test_long_tail_counts_hand_computed(args, expected):
    assert long_tail_counts(*args) == expected


@pytest.mark.parametrize("args, needle", [
    ((100, 3, "zipf", 10.0), "'zipf'"),
    ((100, 3, "exp", 0.5), "imbalance=0.5"),
    ((0, 3, "exp", 2.0), "n_max=0"),
])
def test_long_tail_counts_rejects_bad_values(args, needle):
    with pytest.raises(InvalidInput, match=needle):
        long_tail_counts(*args)


def test_indices_follow_profile_and_keep_small_classes_whole():
    y = np.repeat([0, 1, 2], [20, 20, 20])
    kept = long_tail_indices(y, 3, "exp", 4.0, np.random.default_rng(0))
    assert np.bincount(y[kept]).tolist() == [20, 10, 5]
    assert np.all(np.diff(kept) > 0)

    # class 0 holds fewer than its target (n_max = 30 from class 1): it keeps all 10
    y = np.repeat([0, 1, 2], [10, 30, 30])
    kept = long_tail_indices(y, 3, "exp", 100.0, np.random.default_rng(0))
    assert np.bincount(y[kept], minlength=3).tolist() == [10, 3, 1]


def test_indices_none_keeps_everything_and_seed_decides_selection():
    y = np.repeat([0, 1], [10, 50])
    assert long_tail_indices(y, 2, "none", 10.0, np.random.default_rng(0)).tolist() == \
        list(range(60))
    a = long_tail_indices(y, 2, "step", 10.0, np.random.default_rng(1))
    b = long_tail_indices(y, 2, "step", 10.0, np.random.default_rng(1))
    c = long_tail_indices(y, 2, "step", 10.0, np.random.default_rng(2))
    # n_max = 50 (class 1): class 0 keeps all 10 of its 50 target, class 1 gets 50 / 10
    assert np.bincount(y[a]).tolist() == [10, 5]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
