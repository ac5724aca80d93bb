"""Per-example correctness of one model on one split, kept in memory for paired tests.

Two models scored on the same examples are compared pair by pair: per subgroup, b counts
the examples the reference gets right and the candidate wrong, c the reverse. Reports keep
only counts on disk, so the outcomes travel beside them in memory (a bool and two int
ids per example) and never reach report.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Outcomes", "PairedCounts", "paired_counts"]


@dataclass(frozen=True, eq=False)
class Outcomes:
    """hit: [N] bool, whether each example was classified correctly; label, group: [N]
    int64 ids of its class and subgroup (they identify the split the pairs come from)."""

    hit: Tensor
    label: Tensor
    group: Tensor
    num_groups: int

    def __post_init__(self) -> None:
        if not self.hit.shape == self.label.shape == self.group.shape or self.hit.dim() != 1:
            raise ValueError(f"hit, label and group must all be [N]; got {tuple(self.hit.shape)}, "
                             f"{tuple(self.label.shape)}, {tuple(self.group.shape)}")


@dataclass(frozen=True)
class PairedCounts:
    """Per subgroup, in group-id order: n pairs, b (reference right, candidate wrong) and
    c (reference wrong, candidate right)."""

    n: tuple[int, ...]
    b: tuple[int, ...]
    c: tuple[int, ...]


def paired_counts(reference: Outcomes, candidate: Outcomes) -> PairedCounts:
    """Discordant pairs per subgroup; ``ValueError`` unless both scored the same examples."""
    if (reference.num_groups != candidate.num_groups
            or not torch.equal(reference.label, candidate.label)
            or not torch.equal(reference.group, candidate.group)):
        raise ValueError("paired comparison of models scored on different examples: both "
                         "must be evaluated on the same split, in the same order")
    k = reference.num_groups
    ref, cand, group = reference.hit, candidate.hit, reference.group
    n = torch.bincount(group, minlength=k)
    b = torch.bincount(group[ref & ~cand], minlength=k)
    c = torch.bincount(group[~ref & cand], minlength=k)
    return PairedCounts(tuple(n.tolist()), tuple(b.tolist()), tuple(c.tolist()))
