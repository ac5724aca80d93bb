"""The gate's false-FAIL rate and power, by simulation: no training, seeded, a few seconds.

Two models answer n test examples in each of K subgroups. Per example of a subgroup the
reference alone is right with probability p10 and the candidate alone with p01, so the
true drop is p10 - p01. Under a null the drop is at most the margin d in every subgroup:
at 0 (the models are equally good) or at d (the least favourable case, where false FAILs
are likeliest). A false FAIL is any FAIL in such a stage; its rate over simulations must
stay at or under 1 - confidence, up to simulation error. ``bench/guardrail_calibration.py``
prints the full table.
"""

import math

import numpy as np
import pytest

from compression.guardrails import FAIL, PASS, judge
from compression.guardrails.evidence import Paired
from compression.guardrails.judge import decide_family
from compression.spec import GuardrailSpec
from tests.unit.test_guardrails import by_group, pair

ALPHA, MARGIN, P01 = 0.05, 0.03, 0.01  # P01: the candidate alone right on 1% of examples


def stages(k, n, drops, sims, method="holm", seed=0):
    """The verdicts of ``sims`` simulated stages of k subgroups."""
    rng = np.random.default_rng(seed)
    drops = np.broadcast_to(np.asarray(drops, dtype=float), (k,))
    p10 = P01 + drops
    b = rng.binomial(n, p10, size=(sims, k))
    c = rng.binomial(n - b, P01 / (1 - p10))  # of the pairs the reference alone did not win
    policy = GuardrailSpec(max_drop_vs_one_hot=MARGIN, multiplicity=method)
    return [[v for v, _ in decide_family([Paired(bi, ci, n, MARGIN)
                                          for bi, ci in zip(row_b, row_c)], policy)]
            for row_b, row_c in zip(b.tolist(), c.tolist())]


def fail_rates(k, n, drops, sims, method="holm", seed=0):
    """(share of stages with any FAIL, share failing subgroup 0) over ``sims`` stages."""
    verdicts = stages(k, n, drops, sims, method, seed)
    return (sum(FAIL in v for v in verdicts) / sims,
            sum(v[0] == FAIL for v in verdicts) / sims)


def ceiling(sims):
    """alpha plus three simulation standard errors: a true rate of alpha stays under it."""
    return ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


@pytest.mark.parametrize("k, sims", [(10, 400), (100, 300)])
@pytest.mark.parametrize("n", [50, 100, 1000])
def test_family_wise_false_fail_rate_stays_under_alpha(k, n, sims):
    for true_drop in (0.0, MARGIN):
        rate, _ = fail_rates(k, n, true_drop, sims, seed=n + k)
        assert rate <= ceiling(sims), (k, n, true_drop, rate)


def test_without_correction_most_good_models_are_rejected():
    # The same least favourable null, each of 100 checks at alpha: the problem Holm solves.
    rate, _ = fail_rates(100, 100, MARGIN, 150, method="none", seed=1)
    assert rate > 0.5


def test_a_true_drop_of_twice_the_margin_fails_at_n_1000():
    drops = [2 * MARGIN] + [0.0] * 9
    _, first_fail = fail_rates(10, 1000, drops, 300, seed=2)
    assert first_fail >= 0.8


def test_a_stage_with_a_floor_at_its_margin_ships_at_most_alpha_of_the_time():
    # Shipping needs every check to PASS, each at alpha with no correction: an
    # intersection-union test (Berger 1982) of level alpha. Subgroup 0 sits exactly at the
    # margin (not shown to hold); the other nine are equally good and PASS nearly always,
    # so the bound is nearly attained.
    sims = 600
    verdicts = stages(10, 1000, [MARGIN] + [0.0] * 9, sims, seed=4)
    shipped = sum(all(x == PASS for x in v) for v in verdicts) / sims
    others = sum(all(x == PASS for x in v[1:]) for v in verdicts) / sims
    assert shipped <= ceiling(sims) and others > 0.9


def test_the_simulated_decision_is_the_judge_decision():
    # decide_family is the decision judge() makes; check it on full reports.
    rng = np.random.default_rng(3)
    tables = {}
    for i in range(12):
        n = int(rng.choice([60, 200]))
        b, c = int(rng.integers(0, n // 6)), int(rng.integers(0, n // 20))
        tables[f"g{i}"] = (n - b - c - 3, b, c, 3)
    ref, cand = pair(**tables)
    policy = GuardrailSpec(max_drop_vs_one_hot=MARGIN)
    checks = by_group(judge(cand, policy, "student", one_hot=ref), "max_drop_vs_one_hot")
    decided = decide_family([Paired(b, c, a + b + c + d, MARGIN)
                             for a, b, c, d in tables.values()], policy)
    assert [checks[g].verdict for g in tables] == [v for v, _ in decided]
    assert FAIL in [v for v, _ in decided]  # the sample holds at least one shown harm
