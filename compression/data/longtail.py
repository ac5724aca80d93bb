"""Long-tailed (class-imbalanced) subsampling of a training set, CIFAR-LT style.

Classes are ranked by their index, not their count: class 0 is the head and class C-1 the
rarest, as in the CIFAR-10/100-LT benchmarks, so the profile is the same for every seed.
"""

from __future__ import annotations

import math

import numpy as np

from compression.errors import InvalidInput

__all__ = ["PROFILES", "long_tail_counts", "long_tail_indices"]

PROFILES = ("none", "exp", "step")
# floor() of a float power can land just under an integer (9.999999999 for 10); tolerate it.
_EPS = 1e-9


def long_tail_counts(n_max: int, num_classes: int, profile: str, imbalance: float) -> list[int]:
    """Target sample count per class index c, each at least 1.

    exp: n_c = floor(n_max * imbalance ** (-c / (C - 1))), so class C-1 gets n_max / imbalance.
    step: the first ceil(C / 2) classes keep n_max; the rest get floor(n_max / imbalance).
    none: every class keeps n_max.
    """
    if profile not in PROFILES:
        raise InvalidInput(f"long-tail profile {profile!r} is not one of {', '.join(PROFILES)}")
    if imbalance < 1 or n_max < 1 or num_classes < 1:
        raise InvalidInput(f"long tail needs imbalance >= 1, n_max >= 1 and num_classes >= 1; "
                           f"got imbalance={imbalance}, n_max={n_max}, num_classes={num_classes}")
    if profile == "none" or num_classes == 1:
        return [n_max] * num_classes
    if profile == "exp":
        exps = [-c / (num_classes - 1) for c in range(num_classes)]
        return [max(1, math.floor(n_max * imbalance ** e + _EPS)) for e in exps]
    head = math.ceil(num_classes / 2)
    tail = max(1, math.floor(n_max / imbalance + _EPS))
    return [n_max] * head + [tail] * (num_classes - head)


def long_tail_indices(y: np.ndarray, num_classes: int, profile: str, imbalance: float,
                      rng: np.random.Generator) -> np.ndarray:
    """Indices ([K], sorted) of the samples of y: [N] that a long-tailed subset keeps.

    n_max is the size of the largest class; a class smaller than its target keeps all it has.
    """
    counts = np.bincount(y, minlength=num_classes)
    if profile == "none" or len(y) == 0:
        return np.arange(len(y))
    targets = long_tail_counts(int(counts.max()), num_classes, profile, imbalance)
    keep = [rng.permutation(np.flatnonzero(y == c))[:target] for c, target in enumerate(targets)]
    return np.sort(np.concatenate(keep))
