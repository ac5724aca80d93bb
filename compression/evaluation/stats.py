"""Confidence intervals and score tests for accuracies measured on finite samples.

One model, one subgroup: the Wilson score interval and the score test it inverts.
Two models on the same examples: Tango's asymptotic score interval and test for the
difference of paired proportions (Tango 1998, Statistics in Medicine 17:891-908), with
counts b (the reference right, the candidate wrong) and c (the reverse) out of n pairs,
by default with a variance and a skewness correction (``tango_statistic``).
Two subgroups of one model (independent samples): Newcombe's hybrid score interval
(Newcombe 1998, Statistics in Medicine 17:873-890, method 10). Two models at a population's
subgroup mix, from a split sampled at another: the weighted sum of the strata's accuracies,
or of their paired differences, with a normal interval.

Every interval here is the inversion of a one-sided test, so a verdict read from the
interval and one read from the p-value always agree; ``docs/guardrails.md`` says why
each was chosen.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Callable, Sequence

__all__ = [
    "wilson_interval", "wilson_pvalue", "z_for", "normal_sf", "tango_statistic",
    "tango_interval", "tango_pvalue", "newcombe_interval", "newcombe_pvalue",
    "stratified_accuracy", "stratified_paired_interval",
]

_NORMAL = NormalDist()
_BISECT_STEPS = 200  # enough to shrink [-1, 1] or [0, 40] below double precision


def z_for(alpha: float) -> float:
    """The standard normal quantile with ``alpha`` above it (1.645 for 0.05)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha is {alpha}; it must be in (0, 1)")
    return _NORMAL.inv_cdf(1 - alpha)


def normal_sf(z: float) -> float:
    """P(Z > z) for a standard normal Z; exact 0 and 1 at the infinities."""
    if math.isinf(z):
        return 0.0 if z > 0 else 1.0
    return 0.5 * math.erfc(z / math.sqrt(2))


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n``.

    Chosen over the normal approximation because subgroups are often small and their
    accuracies near 0 or 1, where the normal interval collapses or leaves [0, 1].
    At 0 correct the lower bound is exactly 0.0 and at n correct the upper bound is
    exactly 1.0 (the algebraic values; rounding would otherwise land a hair inside).
    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    _check_counts(correct, n)
    if z <= 0:
        raise ValueError(f"z is {z}; it must be > 0")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    low = 0.0 if correct == 0 else max(0.0, center - half)
    high = 1.0 if correct == n else min(1.0, center + half)
    return low, high


def wilson_pvalue(correct: int, n: int, p0: float) -> float:
    """One-sided score-test p-value of H0: p >= p0 against p < p0.

    Small when ``correct / n`` is far below ``p0``. It is the test the Wilson interval
    inverts: p <= alpha exactly when the Wilson upper bound at ``z_for(alpha)`` is
    below ``p0``. 1 - p is the p-value of the opposite hypothesis (p <= p0).
    """
    _check_counts(correct, n)
    if n == 0 or p0 <= 0:
        return 1.0
    if p0 >= 1:
        return 0.0 if correct < n else 1.0  # one miss disproves p = 1 with certainty
    score = (correct / n - p0) / math.sqrt(p0 * (1 - p0) / n)
    return normal_sf(-score)


def tango_statistic(b: int, c: int, n: int, delta: float, *, corrected: bool = True) -> float:
    """Score statistic for H0: P(b) - P(c) == delta, for b, c discordant pairs out of n.

    The variance is evaluated at the restricted maximum-likelihood estimates of the two
    discordant-cell probabilities (Tango 1998, eq. 3: the positive root of a quadratic).
    Large positive values say the difference exceeds ``delta``; the statistic decreases in
    ``delta``. corrected=False is Tango's statistic as published. corrected=True (what the
    guardrails use) adds two published corrections that keep the one-sided tail honest when
    few pairs disagree: Miettinen & Nurminen's (1985) n / (n - 1) variance factor and the
    Gart & Nam (1988) skewness correction, as Laud's SCAS method applies them to Tango's score.
    """
    _check_pairs(b, c, n)
    p12, p21 = _restricted_cells(b, c, n, delta)
    variance = n * (p12 + p21 - delta * delta)  # = n (2 p21 + delta (1 - delta)), Tango's form
    if corrected and n > 1:
        variance *= n / (n - 1)
    excess = b - c - n * delta
    if variance <= 0:
        return 0.0 if excess == 0 else math.copysign(math.inf, excess)
    z = excess / math.sqrt(variance)
    if not corrected:
        return z
    # Third central moment of one pair's difference (+1 with p12, -1 with p21, else 0).
    mu3 = (p12 * (1 - delta) ** 3 + p21 * (-1 - delta) ** 3
           + (1 - p12 - p21) * (-delta) ** 3)
    gamma = n * mu3 / (6 * variance ** 1.5)
    if abs(gamma) < 1e-12:
        return z
    # The corrected statistic Z solves Z = z - gamma (Z^2 - 1); this root form needs no
    # division by gamma, and continues monotonically where the discriminant goes negative.
    disc = max(0.0, 1 + 4 * gamma * (z + gamma))
    return 2 * (z + gamma) / (1 + math.sqrt(disc))


def tango_pvalue(b: int, c: int, n: int, delta: float, *, corrected: bool = True) -> float:
    """One-sided p-value of H0: difference <= delta against difference > delta."""
    return normal_sf(tango_statistic(b, c, n, delta, corrected=corrected))


def tango_interval(b: int, c: int, n: int, z: float = 1.96, *,
                   corrected: bool = True) -> tuple[float, float]:
    """Score interval for the paired difference (b - c) / n (see ``tango_statistic``).

    Each bound is where the statistic crosses -z or +z, so a one-sided bound at
    ``z_for(alpha)`` is a level-alpha test. ``n == 0`` gives ``(-1.0, 1.0)``.
    """
    _check_pairs(b, c, n)
    if n == 0:
        return -1.0, 1.0

    def stat(d: float) -> float:
        return tango_statistic(b, c, n, d, corrected=corrected)
    low = -1.0 if c == n else _root(lambda d: stat(d) - z, -1.0, 1.0)
    high = 1.0 if b == n else _root(lambda d: stat(d) + z, -1.0, 1.0)
    return low, high


def stratified_accuracy(correct: Sequence[int], n: Sequence[int], weights: Sequence[float],
                        z: float = 1.96) -> tuple[float, float, float]:
    """One model's accuracy at a population's mix from strata sampled at another,
    sum_g w_g c_g / n_g, with its normal interval clipped to [0, 1]: (estimate, low, high).
    Each stratum's variance is p_g (1 - p_g) / n_g. A stratum without examples must have
    weight 0."""
    if not len(correct) == len(n) == len(weights):
        raise ValueError("correct, n and weights need one value per stratum")
    estimate = var = 0.0
    for cg, ng, w in zip(correct, n, weights):
        _check_counts(cg, ng)
        if ng == 0:
            if w:
                raise ValueError("a stratum with weight > 0 has no examples")
            continue
        p = cg / ng
        estimate += w * p
        var += w * w * p * (1 - p) / ng
    half = z * math.sqrt(var)
    return estimate, max(0.0, estimate - half), min(1.0, estimate + half)


def stratified_paired_interval(b: Sequence[int], c: Sequence[int], n: Sequence[int],
                               weights: Sequence[float],
                               z: float = 1.96) -> tuple[float, float, float]:
    """The paired difference at a population's mix, sum_g w_g (b_g - c_g) / n_g, over
    disjoint strata g sampled at another mix (a split that oversamples a minority), with its
    normal interval: (estimate, low, high). Each stratum's variance is
    ((b_g + c_g) / n_g - d_g^2) / n_g, the strata being independent samples. A stratum
    without pairs must have weight 0."""
    if not len(b) == len(c) == len(n) == len(weights):
        raise ValueError("b, c, n and weights need one value per stratum")
    estimate = var = 0.0
    for bg, cg, ng, w in zip(b, c, n, weights):
        _check_pairs(bg, cg, ng)
        if ng == 0:
            if w:
                raise ValueError("a stratum with weight > 0 has no pairs")
            continue
        d = (bg - cg) / ng
        estimate += w * d
        var += w * w * ((bg + cg) / ng - d * d) / ng
    half = z * math.sqrt(max(var, 0.0))
    return estimate, estimate - half, estimate + half


def _restricted_cells(b: int, c: int, n: int, delta: float) -> tuple[float, float]:
    """Maximum-likelihood P(b-cell), P(c-cell) under P(b) - P(c) == delta (Tango 1998)."""
    quad_a = 2 * n
    quad_b = -b - c + (2 * n - b + c) * delta
    quad_c = -c * delta * (1 - delta)
    root = math.sqrt(max(quad_b * quad_b - 4 * quad_a * quad_c, 0.0))
    # The same root two ways: the second avoids cancellation when quad_b > 0.
    p21 = ((root - quad_b) / (2 * quad_a) if quad_b <= 0
           else -2 * quad_c / (quad_b + root))
    return p21 + delta, p21


def newcombe_interval(x1: int, n1: int, x2: int, n2: int,
                      z: float = 1.96) -> tuple[float, float]:
    """Newcombe's hybrid score interval for x1/n1 - x2/n2 from independent samples.

    Each bound combines the two Wilson intervals' distances from their estimates in
    quadrature (Newcombe 1998, method 10).
    """
    p1, p2 = x1 / n1, x2 / n2
    l1, u1 = wilson_interval(x1, n1, z)
    l2, u2 = wilson_interval(x2, n2, z)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return max(-1.0, low), min(1.0, high)


def newcombe_pvalue(x1: int, n1: int, x2: int, n2: int, delta: float) -> float:
    """One-sided p-value of H0: p1 - p2 <= delta, by inverting the hybrid interval.

    The p-value is the alpha at which the lower bound, at ``z_for(alpha)``, reaches
    ``delta``; the bounds have no closed-form test, so the crossing is found by bisection.
    """
    d = x1 / n1 - x2 / n2
    if d > delta:  # the lower bound falls from d (z = 0) as z grows
        z = _root(lambda z: newcombe_interval(x1, n1, x2, n2, max(z, 1e-12))[0] - delta,
                  0.0, 40.0)
        return normal_sf(z)
    if d == delta:
        return 0.5
    z = _root(lambda z: delta - newcombe_interval(x1, n1, x2, n2, max(z, 1e-12))[1], 0.0, 40.0)
    return 1 - normal_sf(z)


def _root(f: Callable[[float], float], lo: float, hi: float) -> float:
    """Bisection for a decreasing ``f`` on [lo, hi]; clamps to an end with no crossing."""
    if f(lo) <= 0:
        return lo
    if f(hi) >= 0:
        return hi
    for _ in range(_BISECT_STEPS):
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        if f(mid) > 0:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _check_counts(correct: int, n: int) -> None:
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")


def _check_pairs(b: int, c: int, n: int) -> None:
    if b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need b, c >= 0 and b + c <= n, got b={b}, c={c}, n={n}")
