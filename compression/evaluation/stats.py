"""Confidence intervals for accuracies measured on finite samples."""

from __future__ import annotations

import math

__all__ = ["wilson_interval"]


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n``.

    Chosen over the normal approximation because subgroups are often small and their
    accuracies near 0 or 1, where the normal interval collapses or leaves [0, 1].
    ``n == 0`` gives the uninformative ``(0.0, 1.0)``.
    """
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if z <= 0:
        raise ValueError(f"z is {z}; it must be > 0")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2n = z * z / n
    center = (p + z2n / 2) / (1 + z2n)
    half = z / (1 + z2n) * math.sqrt(p * (1 - p) / n + z2n / (4 * n))
    # Clamp: at p = 0 or 1 the bounds are exactly 0 or 1 but rounding can step past them.
    return max(0.0, center - half), min(1.0, center + half)
