"""In-memory dataset types shared by loading, training and evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Split", "Dataset"]


@dataclass(frozen=True)
class Split:
    """One split held in memory.

    x: [N, C, H, W] uint8 images; models take ``x.float() / 255`` (values in [0, 1]).
    y: [N] int64 class ids in [0, num_classes).
    group: [N] int64 subgroup ids in [0, num_groups).
    """

    x: torch.Tensor
    y: torch.Tensor
    group: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class Dataset:
    train: Split
    holdout: Split
    test: Split
    class_names: tuple[str, ...]
    group_names: tuple[str, ...]

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
