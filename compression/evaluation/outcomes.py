"""Per-example correctness of one model on one split, kept in memory for paired tests.

Two models scored on the same examples are compared pair by pair: per subgroup, b counts
the examples the reference gets right and the candidate wrong, c the reverse. Reports keep
only counts on disk, so the outcomes travel beside them in memory (a bool and two int
ids per example) and never reach report.json. The group id is the example's cell; a
reported group that pools several cells (a key's group in a job with several keys) sums
their counts, which is exact because the cells partition the examples.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from compression.data.dataset import GroupLayout

__all__ = ["Outcomes", "PairedCounts", "paired_counts"]


@dataclass(frozen=True, eq=False)
class Outcomes:
    """hit: [N] bool, whether each example was classified correctly; label, group: [N]
    int64 ids of its class and subgroup cell (they identify the split the pairs come from).
    layout: how the ``num_groups`` cells pool into the reported groups; None: each cell is
    reported as itself. predicted: [N] int64 predicted class ids, where the maker had them
    (``evaluate`` does), so that a report can be scored again on part of its split."""

    hit: Tensor
    label: Tensor
    group: Tensor
    num_groups: int
    layout: GroupLayout | None = None
    predicted: Tensor | None = None

    def __post_init__(self) -> None:
        if not self.hit.shape == self.label.shape == self.group.shape or self.hit.dim() != 1:
            raise ValueError(f"hit, label and group must all be [N]; got {tuple(self.hit.shape)}, "
                             f"{tuple(self.label.shape)}, {tuple(self.group.shape)}")
        if self.layout is not None and len(self.layout.cell_names) != self.num_groups:
            raise ValueError(f"a layout of {len(self.layout.cell_names)} cells for "
                             f"{self.num_groups} groups")

    @property
    def pooling(self) -> tuple[tuple[int, ...], ...]:
        """The cells of each reported group, in report order."""
        if self.layout is None:
            return tuple((i,) for i in range(self.num_groups))
        return tuple(g.cells for g in self.layout.groups)

    def per_group(self, mask: Tensor) -> Tensor:
        """Examples where ``mask`` [N] holds, counted per reported group: [G] int64."""
        per_cell = torch.bincount(self.group[mask], minlength=self.num_groups)
        return per_cell if self.layout is None else self.layout.pool(per_cell)


@dataclass(frozen=True)
class PairedCounts:
    """Per reported subgroup, in report order: n pairs, b (reference right, candidate
    wrong) and c (reference wrong, candidate right)."""

    n: tuple[int, ...]
    b: tuple[int, ...]
    c: tuple[int, ...]


def paired_counts(reference: Outcomes, candidate: Outcomes) -> PairedCounts:
    """Discordant pairs per reported subgroup; ``ValueError`` unless both scored the same
    examples and report the same groups."""
    if (reference.num_groups != candidate.num_groups
            or reference.pooling != candidate.pooling
            or not torch.equal(reference.label, candidate.label)
            or not torch.equal(reference.group, candidate.group)):
        raise ValueError("paired comparison of models scored on different examples: both "
                         "must be evaluated on the same split and subgroups, in the same order")
    ref, cand = reference.hit, candidate.hit
    n = reference.per_group(torch.ones_like(ref))
    b = reference.per_group(ref & ~cand)
    c = reference.per_group(~ref & cand)
    return PairedCounts(tuple(n.tolist()), tuple(b.tolist()), tuple(c.tolist()))
