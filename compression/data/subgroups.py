"""Subgroup assignment: which group each sample belongs to, named the same on every split.

by class: group = class. by frequency: head / medium / tail from the final training counts
(after long tail and the holdout carve). by map: a user mapping of classes to group names.
by attribute: the source's ``group`` values. Groups that no sample falls into keep their name
(and id), so ids never shift between runs that differ only in sampling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from compression.data.raw import RawSplit
from compression.errors import InvalidInput
from compression.spec import SubgroupSpec

__all__ = ["FREQUENCY_GROUPS", "class_groups", "frequency_groups", "mapped_groups",
           "attribute_names", "attribute_ids"]

FREQUENCY_GROUPS = ("head", "medium", "tail")


def class_groups(spec: SubgroupSpec, class_names: Sequence[str],
                 train_counts: Sequence[int]) -> tuple[np.ndarray, tuple[str, ...]]:
    """(group id of each class: [C], group names) for the class-level modes."""
    if spec.by == "class":
        return np.arange(len(class_names)), tuple(class_names)
    if spec.by == "frequency":
        return frequency_groups(train_counts, spec.head_min_count, spec.tail_max_count)
    if spec.by == "map":
        return mapped_groups(spec.mapping, class_names)
    raise InvalidInput(f"subgroups.by {spec.by!r} is not a class-level mode "
                       "(class, frequency, map)")


def frequency_groups(counts: Sequence[int], head_min_count: int = 0,
                     tail_max_count: int = 0) -> tuple[np.ndarray, tuple[str, ...]]:
    """Head (0) / medium (1) / tail (2) per class from training counts: [C].

    With both thresholds set: head if count >= head_min_count, tail if count <= tail_max_count,
    medium otherwise. Without: classes ranked by count (ties: lower index ranks higher); the
    rarest ceil(C/3) are tail, the top ceil((C - tail)/2) head, the rest medium. C=10 gives 3/3/4.
    """
    counts = np.asarray(counts, dtype=np.int64)
    if head_min_count > 0 and tail_max_count > 0:
        table = np.where(counts >= head_min_count, 0, np.where(counts <= tail_max_count, 2, 1))
        return table.astype(np.int64), FREQUENCY_GROUPS
    n = len(counts)
    n_tail = math.ceil(n / 3)
    n_head = math.ceil((n - n_tail) / 2)
    order = np.lexsort((np.arange(n), -counts))  # most frequent first
    table = np.ones(n, dtype=np.int64)
    table[order[:n_head]] = 0
    table[order[n - n_tail:]] = 2
    return table, FREQUENCY_GROUPS


def mapped_groups(mapping: Mapping[str, str],
                  class_names: Sequence[str]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group id per class: [C] from {class name or index string: group}; names sorted."""
    index = {name: i for i, name in enumerate(class_names)}
    assigned: dict[int, str] = {}
    problems = []
    for key, group in mapping.items():
        c = index.get(key)
        if c is None and key.isdigit() and int(key) < len(class_names):
            c = int(key)
        if c is None:
            problems.append(f"key {key!r} is neither a class name nor a class index "
                            f"0..{len(class_names) - 1}")
        elif assigned.setdefault(c, group) != group:
            problems.append(f"class {class_names[c]!r} is mapped to both {assigned[c]!r} "
                            f"and {group!r}")
    unmapped = [name for i, name in enumerate(class_names) if i not in assigned]
    if unmapped:
        problems.append(f"classes without a group: {unmapped}; map every class")
    if problems:
        raise InvalidInput(problems, "invalid data.subgroups.mapping")
    names = tuple(sorted(set(assigned.values())))
    table = np.asarray([names.index(assigned[c]) for c in range(len(class_names))], np.int64)
    return table, names


def attribute_names(splits: Sequence[RawSplit]) -> tuple[str, ...]:
    """Sorted distinct attribute values over ``splits``; each split must carry them."""
    missing = [s.origin for s in splits if s.attr is None]
    if missing:
        raise InvalidInput(f"subgroups.by is 'attribute' but {', '.join(missing)} has no group "
                           "values; add a 'group' array / column, or use by: class, frequency "
                           "or map")
    return tuple(sorted(set().union(*(np.unique(s.attr).tolist() for s in splits))))


def attribute_ids(attr: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Group ids [N] of attribute values attr: [N]; every value must be in the sorted names."""
    return np.searchsorted(np.asarray(names), attr).astype(np.int64)
