"""``load_dataset``: one spec in, train / holdout / test tensors with subgroup ids out.

Order of steps, and why:
1. read train, test (and holdout when holdout_path is given); convert channels; check that
   all splits share one image shape;
2. max_train: stratified subsample of the raw training set, first, so the long-tail
   proportions computed next hold exactly on what remains;
3. long tail on the training pool;
4. holdout carved from that pool (stratified) when no holdout_path is given, so the holdout
   follows the same long-tailed distribution as train;
5. max_test: stratified subsample of the test set;
6. subgroup ids on every split (frequency groups from the final training counts); with
   several subgroup keys, the id of each sample's intersection cell.
Each random step draws from its own generator seeded by (seed, step), so changing one step's
settings never reshuffles another's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from compression.data.dataset import Dataset, GroupLayout, Split
from compression.data.longtail import long_tail_indices
from compression.data.raw import RawSplit, to_channels
from compression.data.sources import read_split
from compression.data.splits import holdout_split, stratified_subsample
from compression.data.subgroups import assign_groups, attribute_names
from compression.errors import InvalidInput
from compression.spec import DataSpec

__all__ = ["load_dataset", "describe"]

_MAX_TRAIN, _LONG_TAIL, _HOLDOUT, _MAX_TEST = range(4)


def _rng(seed: int, step: int) -> np.random.Generator:
    return np.random.default_rng([seed % 2**64, step])


def load_dataset(spec: DataSpec) -> Dataset:
    """Read, sample and label the data that ``spec`` describes (see the module docstring)."""
    train, test, holdout = _read_all(spec)
    attr_names = (attribute_names([s for s in (train, test, holdout) if s is not None])
                  if "attribute" in spec.subgroups.keys else None)
    if spec.max_train:
        keep = stratified_subsample(train.y, spec.max_train, _rng(spec.seed, _MAX_TRAIN))
        train = train.take(keep)
    num_classes = len(train.class_names)
    train = train.take(long_tail_indices(train.y, num_classes, spec.long_tail.profile,
                                         spec.long_tail.imbalance, _rng(spec.seed, _LONG_TAIL)))
    if holdout is None:
        keep, carved = holdout_split(train.y, spec.holdout_fraction, _rng(spec.seed, _HOLDOUT))
        if len(carved) == 0:
            raise InvalidInput(f"cannot carve a holdout from {train.origin}: no class has 2 or "
                               "more training samples; add data, raise data.max_train or set "
                               "data.holdout_path")
        train, holdout = train.take(keep), train.take(carved)
    if spec.max_test:
        test = test.take(stratified_subsample(test.y, spec.max_test, _rng(spec.seed, _MAX_TEST)))
    counts = np.bincount(train.y, minlength=num_classes).tolist()
    groups, layout = assign_groups(spec.subgroups, (train, holdout, test), counts, attr_names)
    train_s, holdout_s, test_s = (_to_split(s, g, layout)
                                  for s, g in zip((train, holdout, test), groups))
    return Dataset(train=train_s, holdout=holdout_s, test=test_s, class_names=train.class_names,
                   group_names=layout.cell_names)


def _read_all(spec: DataSpec) -> tuple[RawSplit, RawSplit, RawSplit | None]:
    """The splits as read, with channels converted and shapes checked to agree."""
    train = read_split(spec, "train", None)
    test = read_split(spec, "test", train.class_names)
    holdout = read_split(spec, "holdout", train.class_names) if spec.holdout_path else None
    train, test, holdout = (s if s is None else RawSplit(
        to_channels(s.x, spec.channels, s.origin), s.y, s.attr, s.class_names, s.origin)
        for s in (train, test, holdout))
    shape = train.x.shape[1:]
    for other in (test, holdout):
        if other is not None and other.x.shape[1:] != shape:
            raise InvalidInput(
                f"images in {other.origin} are {_chw(other.x.shape[1:])} but those in "
                f"{train.origin} are {_chw(shape)}; set data.channels (and data.image_size for "
                "image files) so that they match")
    size = spec.image_size
    if size and spec.source in ("fashion-mnist", "npz") and shape[1:] != (size, size):
        raise InvalidInput(f"data.image_size ({size}) resizes only imagefolder / manifest "
                           f"images; {train.origin} holds {_chw(shape)} images: set image_size "
                           "to 0")
    return train, test, holdout


def _chw(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape) + " (CxHxW)"


def _to_split(raw: RawSplit, group: np.ndarray, layout: GroupLayout) -> Split:
    return Split(x=torch.from_numpy(np.ascontiguousarray(raw.x, dtype=np.uint8)),
                 y=torch.from_numpy(raw.y.astype(np.int64)),
                 group=torch.from_numpy(np.asarray(group, dtype=np.int64)), layout=layout)


def describe(dataset: Dataset) -> dict[str, Any]:
    """JSON-ready summary: class / group names, input shape [C, H, W] and, per split, its size
    and sample counts per class name and per group name."""
    splits = {}
    for name in ("train", "holdout", "test"):
        split: Split = getattr(dataset, name)
        per_class = split.y.bincount(minlength=dataset.num_classes).tolist()
        per_group = split.group.bincount(minlength=dataset.num_groups).tolist()
        splits[name] = {"size": len(split),
                        "class_counts": dict(zip(dataset.class_names, per_class)),
                        "group_counts": dict(zip(dataset.group_names, per_group))}
    return {"class_names": list(dataset.class_names), "group_names": list(dataset.group_names),
            "input_shape": list(dataset.input_shape), "splits": splits}
