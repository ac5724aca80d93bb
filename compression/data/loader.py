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

Image files and shards (imagefolder, manifest, webdataset) are held in memory or streamed
(``data.in_memory``): ``auto`` first indexes the splits (headers read, nothing decoded) and
keeps them in memory when their decoded size fits ``data.memory_budget_mib``; otherwise, and
with ``never``, every step above runs on the index and each split's x is a ``LazyImages`` that
DataLoader workers decode batch by batch (``compression.data.stream``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from compression.data.dataset import Dataset, GroupLayout, Split
from compression.data.index import ImageIndex
from compression.data.lazy_sources import STREAMABLE, index_split
from compression.data.longtail import long_tail_indices
from compression.data.raw import RawSplit, to_channels
from compression.data.sources import read_split
from compression.data.stream import LazyImages, is_streamed
from compression.data.splits import holdout_split, stratified_subsample
from compression.data.subgroups import assign_groups, attribute_names
from compression.errors import InvalidInput
from compression.spec import DataSpec

__all__ = ["load_dataset", "describe", "loading"]

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
        train = _take(train, keep)
    num_classes = len(train.class_names)
    train = _take(train, long_tail_indices(train.y, num_classes, spec.long_tail.profile,
                                           spec.long_tail.imbalance, _rng(spec.seed, _LONG_TAIL)))
    if holdout is None:
        keep, carved = holdout_split(train.y, spec.holdout_fraction, _rng(spec.seed, _HOLDOUT))
        if len(carved) == 0:
            raise InvalidInput(f"cannot carve a holdout from {train.origin}: no class has 2 or "
                               "more training samples; add data, raise data.max_train or set "
                               "data.holdout_path")
        train, holdout = _take(train, keep), _take(train, carved)
    if spec.max_test:
        test = _take(test, stratified_subsample(test.y, spec.max_test, _rng(spec.seed, _MAX_TEST)))
    counts = np.bincount(train.y, minlength=num_classes).tolist()
    groups, layout = assign_groups(spec.subgroups, (train, holdout, test), counts, attr_names)
    train_s, holdout_s, test_s = (_to_split(s, g, layout, spec.workers)
                                  for s, g in zip((train, holdout, test), groups))
    return Dataset(train=train_s, holdout=holdout_s, test=test_s, class_names=train.class_names,
                   group_names=layout.cell_names)


def _take(split: RawSplit, idx: np.ndarray) -> RawSplit:
    """The samples of ``split`` at ``idx``, decoded or indexed."""
    if not isinstance(split.x, ImageIndex):
        return split.take(idx)
    attr = None if split.attr is None else split.attr[idx]
    return replace(split, x=split.x.take(idx), y=split.y[idx], attr=attr)


def _converted(split: RawSplit | None, channels: int) -> RawSplit | None:
    if split is None:
        return None
    x = (split.x.with_channels(channels) if isinstance(split.x, ImageIndex)
         else to_channels(split.x, channels, split.origin))
    return RawSplit(x, split.y, split.attr, split.class_names, split.origin)


def _read(spec: DataSpec, streamed: bool) -> tuple[RawSplit, RawSplit, RawSplit | None]:
    read = index_split if streamed else read_split
    train = read(spec, "train", None)
    test = read(spec, "test", train.class_names)
    holdout = read(spec, "holdout", train.class_names) if spec.holdout_path else None
    return train, test, holdout


def _read_all(spec: DataSpec) -> tuple[RawSplit, RawSplit, RawSplit | None]:
    """The splits as read (decoded, or indexed when streamed), with channels converted and
    shapes checked to agree."""
    streamed = spec.source in STREAMABLE and spec.in_memory != "always"
    train, test, holdout = (_converted(s, spec.channels) for s in _read(spec, streamed))
    if streamed and spec.in_memory == "auto" and _fits(spec, (train, test, holdout)):
        train, test, holdout = (_converted(s, spec.channels) for s in _read(spec, False))
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


def _fits(spec: DataSpec, splits: tuple[RawSplit | None, ...]) -> bool:
    """Whether the decoded splits fit ``data.memory_budget_mib``."""
    total = sum(s.x.nbytes for s in splits if s is not None)
    return total <= spec.memory_budget_mib * 2**20


def _to_split(raw: RawSplit, group: np.ndarray, layout: GroupLayout, threads: int = 0) -> Split:
    x = (LazyImages(raw.x, threads) if isinstance(raw.x, ImageIndex)
         else torch.from_numpy(np.ascontiguousarray(raw.x, dtype=np.uint8)))
    return Split(x=x,
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


def loading(dataset: Dataset) -> str:
    """``streaming`` when the splits are read batch by batch, ``in_memory`` when held whole."""
    return "streaming" if is_streamed(dataset.train.x) else "in_memory"
