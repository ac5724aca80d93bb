"""Intervals and tests against published worked examples (each number cites its table)."""

import math

import pytest
import torch

from compression.evaluation import Outcomes, paired_counts
from compression.evaluation.stats import (newcombe_interval, newcombe_pvalue, normal_sf,
                                          stratified_accuracy, stratified_paired_interval,
                                          tango_interval, tango_pvalue, tango_statistic,
                                          wilson_interval, wilson_pvalue, z_for)

Z95 = 1.959963984540054  # two-sided 95%


@pytest.mark.parametrize("a, b, c, d, z, published", [
    # Tango (1998), Stat Med 17:891-908, Table VII: 95% interval of the score method.
    (4, 9, 3, 16, Z95, (-0.027, 0.390)),
    # Tango (1998), Table V: 90% interval (43 concordant, one discordant pair).
    (43, 0, 1, 0, 1.6448536269514722, (-0.096, 0.037)),
    # Fagerland, Lydersen & Laake (2014), Stat Med 33:2850-2875, airway hyper-responsiveness
    # before/after stem cell transplantation (Bentur et al. 2009): Tango 95% interval.
    (1, 1, 7, 12, Z95, (-0.517, -0.026)),
])
def test_tango_interval_matches_published_examples(a, b, c, d, z, published):
    n = a + b + c + d
    low, high = tango_interval(b, c, n, z, corrected=False)
    assert (round(low, 3), round(high, 3)) == published
    # each bound is where the score statistic crosses -z / +z
    assert tango_statistic(b, c, n, low, corrected=False) == pytest.approx(z, abs=1e-6)
    assert tango_statistic(b, c, n, high, corrected=False) == pytest.approx(-z, abs=1e-6)


def test_corrected_score_matches_the_scas_example():
    # Tango's score with the n / (n - 1) variance factor and the skewness correction is
    # Laud's SCAS method; ratesci's README prints, for the Fagerland et al. (2014) Table II
    # data (1, 1, 7, 12): 95% interval -0.5281 to -0.01842, score at 0 of -2.07 and
    # McNemar's chi-square times 20/21, 4.286.
    low, high = tango_interval(1, 7, 21, Z95)
    assert (round(low, 4), round(high, 5)) == (-0.5281, -0.01842)
    assert round(tango_statistic(1, 7, 21, 0.0), 2) == -2.07
    assert round(tango_statistic(1, 7, 21, 0.0) ** 2, 3) == 4.286
    # the corrections widen the interval a little on the skewed side
    plain = tango_interval(1, 7, 21, Z95, corrected=False)
    assert low < plain[0] and high > plain[1]


def test_tango_statistic_at_zero_is_mcnemar_and_pvalue_inverts_the_interval():
    # Under H0: difference 0 the restricted estimate is (b + c) / 2n and the statistic is
    # McNemar's (b - c) / sqrt(b + c); there is no skew to correct at 0.
    assert tango_statistic(9, 3, 32, 0.0, corrected=False) == pytest.approx(6 / math.sqrt(12))
    assert tango_statistic(9, 3, 32, 0.0) == pytest.approx(6 / math.sqrt(12 * 32 / 31))
    alpha = 0.05
    for b, c, n, delta in [(7, 2, 100, 0.03), (12, 1, 100, 0.03), (30, 5, 1000, 0.01)]:
        low, _ = tango_interval(b, c, n, z_for(alpha))
        assert (tango_pvalue(b, c, n, delta) <= alpha) == (low > delta)
    # a larger b (more pairs against the candidate) is stronger evidence of a drop
    assert tango_pvalue(12, 1, 100, 0.03) < tango_pvalue(7, 2, 100, 0.03)


def test_tango_interval_edges():
    assert tango_interval(0, 0, 0) == (-1.0, 1.0)
    assert tango_interval(10, 0, 10)[1] == 1.0
    assert tango_interval(0, 10, 10)[0] == -1.0
    low, high = tango_interval(0, 0, 100, z_for(0.05))
    assert low == pytest.approx(-high) and 0 < high < 0.03


@pytest.mark.parametrize("correct, n, published", [
    # Newcombe (1998), Stat Med 17:857-872, Table II, method 3 (Wilson score, no correction).
    (81, 263, (0.2553, 0.3662)),
    (15, 148, (0.0624, 0.1605)),
    (0, 20, (0.0, 0.1611)),
    (1, 29, (0.0061, 0.1718)),
])
def test_wilson_matches_newcombe_table(correct, n, published):
    assert tuple(round(v, 4) for v in wilson_interval(correct, n, Z95)) == published


def test_wilson_bounds_are_exact_at_the_edges():
    assert wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 20)[0] == 0.0
    for n in (1, 3, 7, 20, 99, 1000, 12345):
        assert wilson_interval(n, n, 1.6448536269514722)[1] == 1.0
        assert wilson_interval(0, n, 2.5758293035489)[0] == 0.0


def test_wilson_pvalue_inverts_the_interval():
    alpha = 0.01
    z = z_for(alpha)
    for correct, n, p0 in [(80, 100, 0.9), (85, 100, 0.9), (45, 50, 0.7), (99, 100, 0.95)]:
        high = wilson_interval(correct, n, z)[1]
        assert (wilson_pvalue(correct, n, p0) <= alpha) == (high < p0)
    assert wilson_pvalue(9, 10, 1.0) == 0.0 and wilson_pvalue(10, 10, 1.0) == 1.0


def test_newcombe_hybrid_matches_published_example():
    # Newcombe (1998), Stat Med 17:873-890, example (a) 56/70 vs 48/80, method 10.
    low, high = newcombe_interval(56, 70, 48, 80, Z95)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)
    p = newcombe_pvalue(90, 100, 80, 100, 0.05)
    assert newcombe_interval(90, 100, 80, 100, z_for(p))[0] == pytest.approx(0.05, abs=1e-9)
    assert newcombe_pvalue(90, 100, 88, 100, 0.05) > 0.5


def test_normal_helpers():
    assert z_for(0.05) == pytest.approx(1.6448536, abs=1e-6)
    assert normal_sf(z_for(0.05)) == pytest.approx(0.05)
    assert normal_sf(math.inf) == 0.0 and normal_sf(-math.inf) == 1.0
    with pytest.raises(ValueError):
        z_for(1.0)


def test_paired_counts_per_group_and_same_examples_check():
    label, group = torch.tensor([0, 1, 1, 0, 2]), torch.tensor([0, 0, 1, 1, 1])
    ref = Outcomes(torch.tensor([True, True, False, True, False]), label, group, 2)
    cand = Outcomes(torch.tensor([True, False, True, False, False]), label, group, 2)
    counts = paired_counts(ref, cand)
    assert (counts.n, counts.b, counts.c) == ((2, 3), (1, 1), (0, 1))
    other = Outcomes(cand.hit, torch.tensor([0, 1, 1, 0, 0]), group, 2)
    with pytest.raises(ValueError, match="different examples"):
        paired_counts(ref, other)


def test_stratified_paired_difference_and_its_interval_by_hand():
    # stratum 1: d = (3 - 1) / 10 = 0.2, var (0.4 - 0.04) / 10 = 0.036
    # stratum 2: d = (1 - 2) / 20 = -0.05, var (0.15 - 0.0025) / 20 = 0.007375
    # at weights 1/2: 0.075 and var 0.25 * (0.036 + 0.007375) = 0.01084375
    estimate, low, high = stratified_paired_interval([3, 1], [1, 2], [10, 20], [0.5, 0.5])
    half = 1.96 * math.sqrt(0.01084375)  # the default z, as tango_interval
    assert estimate == pytest.approx(0.075)
    assert (low, high) == pytest.approx((0.075 - half, 0.075 + half))


def test_stratified_difference_at_the_sample_mix_is_the_pooled_difference():
    b, c, n = [12, 5], [4, 9], [300, 100]
    estimate, _, _ = stratified_paired_interval(b, c, n, [0.75, 0.25])
    assert estimate == pytest.approx((17 - 13) / 400)


def test_a_weighted_stratum_without_pairs_is_refused():
    with pytest.raises(ValueError, match="no pairs"):
        stratified_paired_interval([1, 0], [0, 0], [10, 0], [0.5, 0.5])
    assert stratified_paired_interval([1, 0], [0, 0], [10, 0], [1.0, 0.0])[0] == 0.1


def test_stratified_accuracy_by_hand():
    # 0.5 * 8/10 + 0.5 * 15/20 = 0.775; variance 0.25 * 0.16 / 10 + 0.25 * 0.1875 / 20
    estimate, low, high = stratified_accuracy([8, 15], [10, 20], [0.5, 0.5])
    half = 1.96 * math.sqrt(0.25 * 0.016 + 0.25 * 0.009375)
    assert (estimate, low, high) == pytest.approx((0.775, 0.775 - half, 0.775 + half))
    assert stratified_accuracy([10, 20], [10, 20], [0.3, 0.7]) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no examples"):
        stratified_accuracy([1, 0], [10, 0], [0.5, 0.5])
