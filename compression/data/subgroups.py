"""Subgroup assignment: which group each sample belongs to, named the same on every split.

by class: group = class. by frequency: head / medium / tail from the final training counts
(after long tail and the holdout carve). by map: a user mapping of classes to group names.
by attribute: the source's ``group`` values. Groups that no sample falls into keep their name
(and id), so ids never shift between runs that differ only in sampling.

Several keys (``by`` and ``also_by``) are crossed: each sample's group id is its intersection
cell (the finest partition, which training uses), and the reported groups are every key's
groups (``class=Shirt``) and every intersection present in some split
(``class=Shirt & attribute=night``), each as the cells it pools.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from compression.data.dataset import GroupLayout, ReportedGroup
from compression.data.raw import RawSplit
from compression.errors import InvalidInput
from compression.spec import SubgroupSpec

__all__ = ["FREQUENCY_GROUPS", "CELL_SEPARATOR", "class_groups", "frequency_groups",
           "mapped_groups", "attribute_names", "attribute_ids", "assign_groups", "cross",
           "key_group_name", "cell_name", "population_weights"]

FREQUENCY_GROUPS = ("head", "medium", "tail")
CELL_SEPARATOR = " & "


def key_group_name(key: str, value: str) -> str:
    """A key's group in a job with several keys: ``class=Shirt``."""
    return f"{key}={value}"


def cell_name(keys: Sequence[str], values: Sequence[str]) -> str:
    """An intersection, keys in the job's order: ``class=Shirt & attribute=night``."""
    return CELL_SEPARATOR.join(key_group_name(k, v) for k, v in zip(keys, values))


def class_groups(spec: SubgroupSpec, class_names: Sequence[str],
                 train_counts: Sequence[int],
                 key: str | None = None) -> tuple[np.ndarray, tuple[str, ...]]:
    """(group id of each class: [C], group names) for a class-level key (``spec.by`` unless
    ``key`` is given)."""
    key = spec.by if key is None else key
    if key == "class":
        return np.arange(len(class_names)), tuple(class_names)
    if key == "frequency":
        return frequency_groups(train_counts, spec.head_min_count, spec.tail_max_count)
    if key == "map":
        return mapped_groups(spec.mapping, class_names)
    raise InvalidInput(f"subgroups.by {key!r} is not a class-level mode "
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


def assign_groups(spec: SubgroupSpec, splits: Sequence[RawSplit], train_counts: Sequence[int],
                  attr_names: Sequence[str] | None) -> tuple[list[np.ndarray], GroupLayout]:
    """Group ids [N] of every split's samples, and the groups reported on them.

    splits: the final splits (after sampling); train_counts: per class, of the final training
    split; attr_names: ``attribute_names`` of the splits as read, when a key is attribute.
    """
    per_key = [_key_ids(key, spec, splits, train_counts, attr_names) for key in spec.keys]
    if len(per_key) == 1:
        ids, names = per_key[0]
        return ids, GroupLayout.flat(names, spec.by)
    return cross(spec.keys, per_key)


def _key_ids(key: str, spec: SubgroupSpec, splits: Sequence[RawSplit],
             train_counts: Sequence[int], attr_names: Sequence[str] | None,
             ) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """(ids [N] per split, names) of one key's groups."""
    if key == "attribute":
        if attr_names is None:
            raise ValueError("subgroups use 'attribute' but no attribute names were given")
        return [attribute_ids(s.attr, attr_names) for s in splits], tuple(attr_names)
    table, names = class_groups(spec, splits[0].class_names, train_counts, key)
    return [table[s.y] for s in splits], tuple(names)


def cross(keys: Sequence[str], per_key: Sequence[tuple[Sequence[np.ndarray], Sequence[str]]],
          ) -> tuple[list[np.ndarray], GroupLayout]:
    """Cross several keys: per_key holds each key's (ids [N] per split, group names).

    Cells are the value combinations present in some split, in lexicographic order of the
    keys' ids, so they depend on the data, never on the order of samples. Every key's group
    is reported (``key=value``, pooling the cells that carry that value, possibly none), then
    every cell, except a cell holding exactly one key group's samples (a class seen under
    one condition only, or a class crossed with its frequency band): it is reported once,
    under that group's name, rather than tested twice.
    """
    sizes = [len(ids) for ids in per_key[0][0]]
    rows = np.concatenate([np.stack([ids[s] for ids, _ in per_key], axis=1)
                           for s in range(len(sizes))])  # [N over all splits, keys]
    combos, inverse = np.unique(rows, axis=0, return_inverse=True)  # combos: [cells, keys]
    ids = np.split(inverse.reshape(-1).astype(np.int64), np.cumsum(sizes)[:-1])
    names = [tuple(str(n) for n in key_names) for _, key_names in per_key]
    cell_names = tuple(cell_name(keys, [names[j][v] for j, v in enumerate(combo)])
                       for combo in combos.tolist())
    marginals = [ReportedGroup(key_group_name(key, value), (key,),
                               tuple(np.flatnonzero(combos[:, j] == v).tolist()))
                 for j, key in enumerate(keys) for v, value in enumerate(names[j])]
    single = {g.cells for g in marginals if len(g.cells) == 1}
    cells = [ReportedGroup(name, tuple(keys), (i,)) for i, name in enumerate(cell_names)
             if (i,) not in single]
    return list(ids), GroupLayout(cell_names, (*marginals, *cells))


def population_weights(shares: Mapping[str, float], cell_names: Sequence[str],
                       holdout_counts: Sequence[int]) -> tuple[float, ...] | None:
    """``subgroups.shares`` as one weight per cell (summing to 1), for accuracy at the
    population's mix; None when no shares are given. Every cell with holdout examples needs
    a share (0 is one), and a cell with a share needs holdout examples to be estimated."""
    if not shares:
        return None
    cells = list(cell_names)
    unknown = [name for name in shares if name not in cells]
    missing = [c for c, n in zip(cells, holdout_counts) if n and c not in shares]
    unseen = [c for c, n in zip(cells, holdout_counts) if not n and shares.get(c, 0) > 0]
    problems = []
    if unknown:
        problems.append(f"subgroups.shares names {unknown!r:.200}, which the data has not; its "
                        f"subgroups are {cells!r:.300}")
    if missing:
        problems.append(f"subgroups.shares gives no share for {missing!r:.200}; give every "
                        "subgroup its share (0 for one the model will not serve)")
    if unseen:
        problems.append(f"subgroups.shares gives a share to {unseen!r:.200}, which has no "
                        "holdout examples to measure it on")
    if problems:
        raise InvalidInput(problems, "invalid data.subgroups.shares")
    total = sum(shares.values())
    if total <= 0:
        raise InvalidInput("subgroups.shares are all 0; give the population's mix")
    return tuple(shares.get(c, 0.0) / total for c in cells)
