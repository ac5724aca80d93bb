"""Family-wise control of false FAILs across every check of one stage.

A stage judges K rule x subgroup checks at once. Each FAIL claims harm, so a FAIL on a
model that harms no subgroup is a false reject; with K checks each at level alpha, some
check of a good model fails by chance far more often than alpha. Holm's step-down
procedure (Holm 1979) keeps the probability of any false FAIL at most alpha for every
configuration of true and false hypotheses, and rejects at least what Bonferroni does.

PASS claims need no correction: the stage ships only if every check passes, an
intersection-union test (Berger 1982, Technometrics 24:295-300), whose level is the
largest level of its component tests, here alpha each.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["METHODS", "adjust"]

METHODS = ("holm", "bonferroni", "none")


def adjust(p_values: Sequence[float], alpha: float, method: str) -> list[tuple[float, bool]]:
    """For each p-value, in the order given: (the threshold it was compared with, rejected).

    holm: the i-th smallest p-value (i from 0) is compared with alpha / (K - i) while every
        smaller one was rejected; from the first that is not, every later check keeps that
        threshold, so "p <= threshold" and "rejected" always agree.
    bonferroni: alpha / K for every check. none: alpha for every check.
    """
    if method not in METHODS:
        raise ValueError(f"unknown multiplicity method {method!r}; use one of {METHODS}")
    k = len(p_values)
    if method == "none" or k == 0:
        return [(alpha, p <= alpha) for p in p_values]
    if method == "bonferroni":
        return [(alpha / k, p <= alpha / k) for p in p_values]
    order = sorted(range(k), key=lambda i: p_values[i])  # stable: ties keep check order
    out: list[tuple[float, bool]] = [(alpha, False)] * k
    stopped = False
    threshold = alpha / k
    for rank, i in enumerate(order):
        if not stopped:
            threshold = alpha / (k - rank)
            stopped = p_values[i] > threshold
        out[i] = (threshold, not stopped)
    return out
