"""What every training objective looks like to the trainer, and what it may know of the job."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from compression.data.dataset import Dataset, Split
from compression.errors import InvalidInput

__all__ = ["Loss", "LossContext", "LossFn", "StatelessLoss", "class_groups_of"]

# (student_logits [B, C], labels [B], teacher_logits [B, C] | None, groups [B]) -> scalar
LossFn = Callable[[Tensor, Tensor, "Tensor | None", Tensor], Tensor]


@runtime_checkable
class Loss(Protocol):
    """A built objective. Stateful ones (group-DRO weights) checkpoint via the state dict."""

    needs_teacher: bool

    def __call__(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                 groups: Tensor) -> Tensor:
        """student_logits: [B, C]; labels: [B]; teacher_logits: [B, C] or None; groups: [B]
        -> scalar to minimise."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class LossContext:
    """Facts about the job a mitigation may use when it is built.

    teacher_reliability: per-group measures of the teacher (e.g. holdout accuracy by group
    name) for mitigations that soften the teacher where it is weak; None when not measured.
    ``compression.reliability.TeacherReliability.to_dict()`` gives this form.
    class_groups: [C] the subgroup of each class when subgroups group whole classes (by
    class, frequency or map: every training example of a class is in one subgroup); None
    otherwise (attribute subgroups). LTKD groups its classes by it.
    holdout: the holdout split, for objectives that update from the student's holdout error
    (group-DRO); not part of equality.
    harm_evidence: the harm probe's paired counts per subgroup
    (``compression.losses.harm_probe.HarmEvidence.to_dict()``), for objectives that weight
    the teacher by measured harm; None when not probed.
    teacher_holdout_logits: [N_holdout, C] logits of the teacher the student distills from,
    for objectives that refit the teacher on holdout; not part of equality.
    """

    num_classes: int
    num_groups: int
    group_names: tuple[str, ...]
    train_class_counts: list[int]
    teacher_reliability: dict[str, Any] | None = None
    class_groups: tuple[int, ...] | None = None
    holdout: Split | None = field(default=None, compare=False, repr=False)
    harm_evidence: dict[str, Any] | None = None
    teacher_holdout_logits: torch.Tensor | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Callers pass lists or tuples; store tuples/lists as annotated so contexts compare equal.
        object.__setattr__(self, "group_names", tuple(self.group_names))
        object.__setattr__(self, "train_class_counts", list(self.train_class_counts))
        if self.class_groups is not None:
            object.__setattr__(self, "class_groups", tuple(int(g) for g in self.class_groups))
            if len(self.class_groups) != self.num_classes or not all(
                    0 <= g < self.num_groups for g in self.class_groups):
                raise ValueError(f"class_groups {self.class_groups} must give each of "
                                 f"{self.num_classes} classes a group id < {self.num_groups}")
        if len(self.group_names) != self.num_groups:
            raise ValueError(f"{len(self.group_names)} group names for {self.num_groups} groups")
        if len(self.train_class_counts) != self.num_classes:
            raise ValueError(f"{len(self.train_class_counts)} class counts for "
                             f"{self.num_classes} classes")

    @classmethod
    def from_dataset(cls, data: Dataset, teacher_reliability: dict[str, Any] | None = None,
                     *, harm_evidence: dict[str, Any] | None = None,
                     teacher_holdout_logits: torch.Tensor | None = None) -> LossContext:
        return cls(num_classes=data.num_classes, num_groups=data.num_groups,
                   group_names=tuple(data.group_names),
                   train_class_counts=data.train_class_counts(),
                   teacher_reliability=teacher_reliability,
                   class_groups=class_groups_of(data.train, data.num_classes),
                   holdout=data.holdout, harm_evidence=harm_evidence,
                   teacher_holdout_logits=teacher_holdout_logits)


def class_groups_of(split: Split, num_classes: int) -> tuple[int, ...] | None:
    """The subgroup of each class in ``split``: [C]; None when a class spans two subgroups or
    has no example (the subgroups then do not partition the classes)."""
    if len(split) == 0:
        return None
    width = int(split.group.max()) + 1
    pairs = torch.unique(split.y.long() * width + split.group.long())  # sorted (class, group)
    if (pairs // width).tolist() != list(range(num_classes)):  # each class exactly once
        return None
    return tuple((pairs % width).tolist())


class StatelessLoss:
    """A ``Loss`` around a pure function; its state dict is empty."""

    def __init__(self, name: str, fn: LossFn, *, needs_teacher: bool,
                 facts: dict[str, Any] | None = None):
        self.name = name
        self.fn = fn
        self.needs_teacher = needs_teacher
        # What the objective was built from (fitted on holdout, say): reported and
        # checkpointed as its state, never updated by training.
        self.facts = dict(facts or {})

    def __call__(self, student_logits: Tensor, labels: Tensor, teacher_logits: Tensor | None,
                 groups: Tensor) -> Tensor:
        if self.needs_teacher and teacher_logits is None:
            raise ValueError(f"loss {self.name!r} needs teacher_logits; got None")
        return self.fn(student_logits, labels, teacher_logits, groups)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.facts)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Another state means the checkpoint was trained with a different objective; the
        # facts themselves are rebuilt from the same data, so the keys are what must match.
        if set(state or {}) != set(self.facts):
            raise InvalidInput(f"the checkpoint holds loss state {sorted(state or {})} but "
                               f"mitigation {self.name!r} has {sorted(self.facts) or 'none'}; "
                               "resume with the mitigation it was trained with")

    def __repr__(self) -> str:
        return f"StatelessLoss({self.name!r}, needs_teacher={self.needs_teacher})"
