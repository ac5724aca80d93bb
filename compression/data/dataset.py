"""In-memory dataset types shared by loading, training and evaluation."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Sequence

import torch

from compression.errors import InvalidInput

__all__ = ["Split", "Dataset", "ReportedGroup", "GroupLayout"]


@dataclass(frozen=True)
class ReportedGroup:
    """One group that evaluation and the guardrails report on, as the cells it pools.

    keys: the subgroup keys that define it: one for a key's group (``class=Shirt``, or the
        plain ``Shirt`` of a single-key job), several for an intersection
        (``class=Shirt & attribute=night``). Empty when nothing says which key.
    cells: the group ids (cells) it contains, ascending; it may contain none.
    """

    name: str
    keys: tuple[str, ...]
    cells: tuple[int, ...]

    @property
    def is_intersection(self) -> bool:
        return len(self.keys) > 1


@dataclass(frozen=True)
class GroupLayout:
    """The cells (each sample's one group id; the finest partition, which training uses)
    and the groups reported on them. Each reported group is a union of cells, so its
    counts are sums of cell counts: evaluation needs one pass over the data."""

    cell_names: tuple[str, ...]
    groups: tuple[ReportedGroup, ...]

    def __post_init__(self) -> None:
        twice = [name for name, k in Counter(g.name for g in self.groups).items() if k > 1]
        if twice:
            raise InvalidInput(f"subgroup names {twice!r:.200} stand for different groups; "
                               "rename the classes, attribute values or mapped groups that make them")
        k = len(self.cell_names)
        if any(not 0 <= c < k for g in self.groups for c in g.cells):
            raise ValueError(f"a reported group names a cell outside [0, {k})")

    @classmethod
    def flat(cls, names: Sequence[str], key: str | None = None) -> GroupLayout:
        """Every cell reported as itself (a single-key job)."""
        keys = () if key is None else (key,)
        names = tuple(str(n) for n in names)
        return cls(names, tuple(ReportedGroup(n, keys, (i,)) for i, n in enumerate(names)))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(g.name for g in self.groups)

    @property
    def intersections(self) -> tuple[str, ...]:
        """Names of the reported groups that are intersections of several keys."""
        return tuple(g.name for g in self.groups if g.is_intersection)

    def pool(self, per_cell: torch.Tensor) -> torch.Tensor:
        """Sums over each reported group's cells: per_cell [..., K] -> [..., G]."""
        if per_cell.shape[-1] != len(self.cell_names):
            raise ValueError(f"{per_cell.shape[-1]} values for {len(self.cell_names)} cells")
        if not self.groups:
            return per_cell[..., :0]
        return torch.stack([per_cell[..., list(g.cells)].sum(-1) for g in self.groups], -1)


@dataclass(frozen=True)
class Split:
    """One split: its images, held in memory or streamed, and its labels and groups.

    x: [N, C, H, W] uint8 images; models take ``x.float() / 255`` (values in [0, 1]). A
        tensor in memory, or a ``compression.data.stream.LazyImages`` that decodes the samples
        it is indexed or sliced to (``is_streamed``); either answers ``shape`` and ``len``.
    y: [N] int64 class ids in [0, num_classes).
    group: [N] int64 subgroup ids in [0, num_groups): with several subgroup keys, the
        intersection cell of each sample.
    layout: the groups evaluation reports on these ids, each pooling cells; None: each id
        is reported as itself. It travels with the ids so that every evaluation of the
        split reports the same groups.
    """

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor
    layout: GroupLayout | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    """train / holdout / test; ``group_names`` name the subgroup ids of every split (the
    cells, with several subgroup keys); ``layout`` the groups reported on them."""

    train: Split
    holdout: Split
    test: Split
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]

    @property
    def layout(self) -> GroupLayout:
        """The reported groups (the splits share one layout); each cell by default."""
        return self.test.layout or GroupLayout.flat(self.group_names)

    def group_counts(self, split: Split) -> list[int]:
        """Examples of ``split`` in each reported group, in report order."""
        per_cell = split.group.bincount(minlength=self.num_groups)
        return self.layout.pool(per_cell).tolist()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_groups(self) -> int:
        return len(self.group_names)

    def train_class_counts(self) -> list[int]:
        return self.train.y.bincount(minlength=self.num_classes).tolist()

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]
