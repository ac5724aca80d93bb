"""Stratified, seeded sampling: subsets that keep class proportions, and the holdout carve."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["largest_remainder", "stratified_subsample", "holdout_split", "halves"]

# Fractional parts like 0.1 * 25 + 0.5 may land just under an integer in floating point.
_EPS = 1e-9


def largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Split ``total`` into integer parts proportional to weights: [C] (Hamilton's method).

    Each part gets floor(total * w / W); the leftover units go to the largest remainders, ties
    to the lower index. Exact integer arithmetic, so no part exceeds its weight when total <= W.
    """
    weights = np.asarray(weights, dtype=np.int64)
    denom = int(weights.sum())
    if denom == 0 or total == 0:
        return np.zeros_like(weights)
    parts, remainders = np.divmod(total * weights, denom)
    leftover = total - int(parts.sum())
    parts[np.argsort(-remainders, kind="stable")[:leftover]] += 1
    return parts


def stratified_subsample(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Indices ([min(n, N)], sorted) of a class-stratified random subset of y: [N].

    When n is at least the number of classes present, every present class keeps one sample
    and the rest of n is shared in proportion to the remaining counts; otherwise n is shared in
    proportion to the counts. n >= N keeps everything.
    """
    if n >= len(y):
        return np.arange(len(y))
    counts = np.bincount(y)
    present = (counts > 0).astype(np.int64)
    if n >= present.sum():
        quota = present + largest_remainder(counts - present, n - int(present.sum()))
    else:
        quota = largest_remainder(counts, n)
    keep = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in enumerate(quota)]
    return np.sort(np.concatenate(keep))


def holdout_split(y: np.ndarray, fraction: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split y: [N] into (train indices, holdout indices), both sorted, stratified by class.

    A class of n >= 2 samples gives round-half-up(n * fraction) to the holdout, clamped to
    [1, n - 1] so both sides see it; a class with a single sample keeps it in train.
    """
    train, holdout = [], []
    for c, n in enumerate(np.bincount(y)):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = min(max(math.floor(n * fraction + 0.5 + _EPS), 1), n - 1) if n >= 2 else 0
        holdout.append(idx[:k])
        train.append(idx[k:])
    empty = np.zeros(0, np.int64)
    return (np.sort(np.concatenate(train or [empty])),
            np.sort(np.concatenate(holdout or [empty])))


def halves(strata: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split examples into two sorted index sets, each stratum (strata: [N] ints >= 0) cut in
    half by a draw seeded by ``seed`` alone; an odd stratum's extra example goes to the second,
    a stratum of one example to the first (``holdout_split`` at 0.5)."""
    _, dense = np.unique(np.asarray(strata, dtype=np.int64), return_inverse=True)
    return holdout_split(dense.reshape(-1), 0.5, np.random.default_rng(seed))
