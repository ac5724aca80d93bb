"""The test behind one rule on one subgroup: an estimate, its margin and two one-sided tests.

Every check asks two questions of the same data (``docs/guardrails.md``):

- harm: is the subgroup shown to break the rule? (one-sided p-value ``p_harm``; FAIL when it
  is below the check's multiplicity-adjusted threshold)
- safety: is the subgroup shown to keep it? (one-sided p-value ``p_safe``; PASS when it is
  below 1 - confidence)

Three kinds of evidence, by how the compared numbers were measured:

- ``OneSample``: one model's accuracy against a fixed floor (Wilson score test).
- ``Paired``: two models on the same examples; the drop = reference accuracy - candidate
  accuracy = (b - c) / n against a margin (Tango score test). Models that agree on every
  example (b = c = 0) differ by exactly zero.
- ``TwoSample``: two subgroups of one model, different examples; the gap = best accuracy -
  this subgroup's against a margin (Newcombe hybrid score interval).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

from compression.evaluation.stats import (newcombe_interval, newcombe_pvalue, normal_sf,
                                          tango_interval, tango_pvalue, tango_statistic,
                                          wilson_interval, wilson_pvalue, z_for)

__all__ = ["Evidence", "OneSample", "Paired", "TwoSample", "bisect_first"]


class Evidence(ABC):
    """Common surface of the three kinds. ``harm_above``: harm is an estimate above the
    margin (drops, gaps) rather than below it (accuracy floors)."""

    method: str
    harm_above: bool
    n: int
    margin: float
    b: int | None  # paired evidence only: the discordant pairs
    c: int | None

    @property
    @abstractmethod
    def estimate(self) -> float:
        """The measured drop, gap or accuracy."""

    @abstractmethod
    def p_harm(self) -> float:
        """One-sided p-value of the hypothesis that there is no harm beyond the margin."""

    @abstractmethod
    def p_safe(self) -> float:
        """One-sided p-value of the hypothesis that the margin is not shown to hold."""

    @abstractmethod
    def bounds(self, alpha_safe: float, alpha_harm: float) -> tuple[float, float]:
        """(low, high) on the estimate: the bound on the safe side at one-sided
        ``alpha_safe``, the one on the harm side at ``alpha_harm``. The check PASSes when
        the safe bound clears the margin and FAILs when the harm bound does."""

    @abstractmethod
    def mde(self, alpha: float) -> float | None:
        """The smallest harm (drop, gap, or shortfall below the floor) that this many test
        examples could show at one-sided level ``alpha``; None when none could."""


@dataclass(frozen=True)
class OneSample(Evidence):
    correct: int
    n: int
    margin: float  # the floor
    method = "wilson_score"
    harm_above = False
    b = c = None

    @property
    def estimate(self) -> float:
        return self.correct / self.n

    def p_harm(self) -> float:
        return wilson_pvalue(self.correct, self.n, self.margin)

    def p_safe(self) -> float:
        if self.margin >= 1:
            return 1.0  # no finite sample shows an accuracy of 100%
        return 1.0 - wilson_pvalue(self.correct, self.n, self.margin)

    def bounds(self, alpha_safe: float, alpha_harm: float) -> tuple[float, float]:
        return (wilson_interval(self.correct, self.n, z_for(alpha_safe))[0],
                wilson_interval(self.correct, self.n, z_for(alpha_harm))[1])

    def mde(self, alpha: float) -> float | None:
        # The most correct answers that still show harm; the p-value grows with correct.
        k = _last(lambda k: wilson_pvalue(k, self.n, self.margin) <= alpha, self.n)
        return None if k is None else self.margin - k / self.n


@dataclass(frozen=True)
class Paired(Evidence):
    b: int  # reference right, candidate wrong
    c: int  # reference wrong, candidate right
    n: int
    margin: float  # the largest drop allowed
    method = "tango_score"
    harm_above = True

    @property
    def identical(self) -> bool:
        return self.b == 0 and self.c == 0

    @property
    def estimate(self) -> float:
        return (self.b - self.c) / self.n

    def p_harm(self) -> float:
        if self.identical:  # same answer on every example: the drop is exactly 0
            return 1.0 if self.margin >= 0 else 0.0
        return tango_pvalue(self.b, self.c, self.n, self.margin)

    def p_safe(self) -> float:
        if self.identical:
            return 0.0 if self.margin >= 0 else 1.0
        return normal_sf(-tango_statistic(self.b, self.c, self.n, self.margin))

    def bounds(self, alpha_safe: float, alpha_harm: float) -> tuple[float, float]:
        if self.identical:
            return 0.0, 0.0
        return (tango_interval(self.b, self.c, self.n, z_for(alpha_harm))[0],
                tango_interval(self.b, self.c, self.n, z_for(alpha_safe))[1])

    def mde(self, alpha: float) -> float | None:
        return paired_mde(self.n, self.margin, alpha)


@dataclass(frozen=True)
class TwoSample(Evidence):
    best_correct: int
    best_n: int
    correct: int
    n: int
    margin: float  # the largest gap allowed
    method = "newcombe_hybrid"
    harm_above = True
    b = c = None

    @property
    def estimate(self) -> float:
        return self.best_correct / self.best_n - self.correct / self.n

    def p_harm(self) -> float:
        return newcombe_pvalue(self.best_correct, self.best_n, self.correct, self.n, self.margin)

    def p_safe(self) -> float:
        return 1.0 - self.p_harm()

    def bounds(self, alpha_safe: float, alpha_harm: float) -> tuple[float, float]:
        args = (self.best_correct, self.best_n, self.correct, self.n)
        return (newcombe_interval(*args, z_for(alpha_harm))[0],
                newcombe_interval(*args, z_for(alpha_safe))[1])

    def mde(self, alpha: float) -> float | None:
        k = _last(lambda k: newcombe_pvalue(self.best_correct, self.best_n, k, self.n,
                                            self.margin) <= alpha, self.n)
        return None if k is None else self.best_correct / self.best_n - k / self.n


def paired_mde(n: int, margin: float, alpha: float) -> float | None:
    """The smallest drop n pairs could show to exceed ``margin`` at one-sided ``alpha``.

    Reached when every disagreement goes against the candidate (c = 0): b / n for the
    smallest such b. Disagreements both ways need a larger drop.
    """
    if n == 0:
        return None
    b = _first(lambda b: tango_pvalue(b, 0, n, margin) <= alpha, n)
    return None if b is None else b / n


def bisect_first(ok: Callable[[int], bool], lo: int, hi: int) -> int:
    """The smallest k in (lo, hi] with ok(k), for a predicate false then true, where ok(hi)
    holds and ok(lo) is taken as false."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def _first(shows: Callable[[int], bool], n: int) -> int | None:
    """The smallest k in [0, n] with shows(k), for a predicate false then true."""
    return bisect_first(shows, -1, n) if shows(n) else None


def _last(shows: Callable[[int], bool], n: int) -> int | None:
    """The largest k in [0, n] with shows(k), for a predicate true then false."""
    if not shows(0):
        return None
    return n if shows(n) else bisect_first(lambda k: not shows(k), 0, n) - 1
