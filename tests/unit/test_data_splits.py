import numpy as np
import pytest

from compression.data.splits import (halves, holdout_split, largest_remainder,
                                      stratified_subsample)


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("weights, total, expected", [
    ([5, 3, 2], 7, [4, 2, 1]),  # floors 3,2,1; the leftover unit goes to remainder .5
    ([1, 1, 1], 2, [1, 1, 0]),  # equal remainders: lower index first
    ([0, 4], 3, [0, 3]),
    ([3, 3], 0, [0, 0]),
])
def test_largest_remainder(weights, total, expected):
    assert largest_remainder(np.array(weights), total).tolist() == expected


def test_stratified_subsample_keeps_proportions_and_every_class():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    idx = stratified_subsample(y, 10, rng())
    # one per class, then 7 shared over [49, 29, 19] -> [4, 2, 1]
    assert np.bincount(y[idx]).tolist() == [5, 3, 2]
    assert len(set(idx.tolist())) == 10 and np.all(np.diff(idx) > 0)

    # one each, then 2 over [0, 59, 38]: floors [0, 1, 0], remainders 21/97 vs 76/97 -> class 2
    y = np.repeat([0, 1, 2], [1, 60, 39])
    assert np.bincount(y[stratified_subsample(y, 5, rng())], minlength=3).tolist() == [1, 2, 2]


def test_stratified_subsample_smaller_than_class_count_and_larger_than_n():
    y = np.repeat([0, 1, 2], [50, 30, 20])
    assert np.bincount(y[stratified_subsample(y, 2, rng())], minlength=3).tolist() == [1, 1, 0]
    assert stratified_subsample(y, 500, rng()).tolist() == list(range(100))


def test_stratified_subsample_is_seeded():
    y = np.repeat([0, 1], [100, 100])
    assert np.array_equal(stratified_subsample(y, 20, rng(3)), stratified_subsample(y, 20, rng(3)))
    assert not np.array_equal(stratified_subsample(y, 20, rng(3)),
                              stratified_subsample(y, 20, rng(4)))


@pytest.mark.parametrize("fraction, holdout_counts", [
    (0.1, [1, 1, 1, 0]),  # 10*.1=1; 5*.1=.5 rounds up; 2*.1 clamps up to 1; 1 sample stays
    (0.5, [5, 3, 1, 0]),
    (0.9, [9, 4, 1, 0]),  # 5*.9 = 4.5 -> 5, clamped to n-1 = 4 so train keeps one
])
def test_holdout_split_stratified_and_disjoint(fraction, holdout_counts):
    y = np.repeat([0, 1, 2, 3], [10, 5, 2, 1])
    train, holdout = holdout_split(y, fraction, rng())
    assert np.bincount(y[holdout], minlength=4).tolist() == holdout_counts
    assert np.bincount(y[train], minlength=4).tolist() == \
        [n - h for n, h in zip([10, 5, 2, 1], holdout_counts)]
    assert set(train.tolist()).isdisjoint(holdout.tolist())
    assert sorted(train.tolist() + holdout.tolist()) == list(range(18))


def test_holdout_split_is_seeded():
    y = np.repeat([0, 1], [40, 40])
    a, b, c = (holdout_split(y, 0.25, rng(s))[1] for s in (7, 7, 8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_halves_cut_every_stratum_in_two_by_the_seed_alone():
    strata = np.array([3] * 5 + [0] * 4 + [9] + [2] * 2)
    first, second = halves(strata, seed=7)
    assert sorted([*first, *second]) == list(range(len(strata)))
    # 5 -> 2 + 3 (the odd one to the second), 4 -> 2 + 2, a single example stays first
    assert [np.sum(strata[first] == s) for s in (3, 0, 9, 2)] == [2, 2, 1, 1]
    assert [np.sum(strata[second] == s) for s in (3, 0, 9, 2)] == [3, 2, 0, 1]
    again = halves(strata, seed=7)
    assert np.array_equal(first, again[0]) and np.array_equal(second, again[1])
    draws = {tuple(halves(np.zeros(40, np.int64), seed)[0]) for seed in range(5)}
    assert len(draws) > 1  # the seed decides which examples fall where
