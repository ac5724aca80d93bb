"""The streaming data path: samples read, decoded and augmented in DataLoader workers.

A streamed split's ``x`` is a ``LazyImages``: [N, C, H, W] uint8 that decodes the indexed
samples it is sliced to, so code that slices a split (evaluation, calibration, parity checks)
works on either path. Training and the teacher-logit pass read through
``torch.utils.data.DataLoader`` with worker processes: each worker opens a sample's file or
shard through ``compression.access`` (the job's policy is installed in every worker), decodes
it, resizes it (``data.image_size``), converts its channels, crops and flips it when training
augments, and applies an optional per-sample ``transform``. Memory holds the batches in
flight (about ``2 * workers`` of them), not the split.

Batches are the in-memory path's: the sampler takes the epoch's order from the caller (the
training loop's seeded shuffle) and cuts the same global batches; each rank takes every
world-th sample of a batch, as ``training.loop`` shards a global batch. Augmentation draws per
sample from (seed, epoch, position in the epoch), so crops do not depend on the number of ranks
or workers and an epoch replays exactly on resume; they are not the in-memory path's draws,
which come from one generator per batch on the training device.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler, get_worker_info

from compression import access
from compression.data.index import ImageIndex
from compression.seeds import derived_seed

__all__ = ["LazyImages", "SampleDataset", "EpochBatches", "OrderedBatches", "augment_sample",
           "make_loader", "is_streamed"]

Key = tuple[int, int, int]  # (sample index, epoch, position in the epoch's order)
Transform = Callable[[torch.Tensor], torch.Tensor]  # [C, H, W] uint8 -> a model input


def is_streamed(x: Any) -> bool:
    """True when a split's ``x`` is read on demand rather than held in memory."""
    return isinstance(x, LazyImages)


class LazyImages:
    """x: [N, C, H, W] uint8 of a streamed split, decoded when indexed.

    ``x[i]``, ``x[a:b]``, ``x[idx]`` (int tensor or array) decode those samples, on up to
    ``workers`` threads (image decoding releases the GIL), into a tensor. A boolean mask
    ``x[mask]`` (or ``select``) gives a ``LazyImages`` of those samples instead, decoding
    nothing: a mask carves a sub-split, as the holdout folds of a cross-fit do, which may be
    as large as the split. ``shape``, ``dtype``, ``ndim`` and ``len`` read nothing.
    ``workers`` is also the number of DataLoader worker processes that training reads the
    split with (``data.workers``)."""

    dtype = torch.uint8
    ndim = 4

    def __init__(self, index: ImageIndex, workers: int = 0):
        self.index = index
        self.workers = workers
        self._local = threading.local()
        self._pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.index), *self.index.sample_shape))

    def __len__(self) -> int:
        return len(self.index)

    def dim(self) -> int:
        return 4

    def __getitem__(self, key: Any) -> torch.Tensor:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            return self._read(np.arange(n)[[key]])[0]
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(n)))
        rows = torch.as_tensor(key).cpu().numpy().reshape(-1)
        if rows.dtype == np.bool_:
            return self.select(rows)
        return self._read(np.arange(n)[rows])

    def select(self, rows: np.ndarray) -> "LazyImages":
        """The samples at ``rows`` (positions, or a boolean mask over all N), not decoded."""
        return LazyImages(self.index.take(np.arange(len(self))[rows]), self.workers)

    def _read(self, rows: np.ndarray) -> torch.Tensor:
        if len(rows) == 0:
            return torch.empty((0, *self.index.sample_shape), dtype=torch.uint8)
        if self.workers < 2 or len(rows) < 2:
            arrays = [self._decode(int(i)) for i in rows]
        else:
            arrays = list(self._threads().map(self._decode, (int(i) for i in rows)))
        return torch.from_numpy(np.stack(arrays))

    def _threads(self) -> ThreadPoolExecutor:
        """One pool per process, kept: its threads keep their open shards between batches
        (a shard in object storage is copied once per thread, not once per batch)."""
        if self._pool is None or self._pool[0] != os.getpid():  # a fork has no threads
            self._pool = (os.getpid(), ThreadPoolExecutor(self.workers))
        return self._pool[1]

    def _decode(self, i: int) -> np.ndarray:
        shards = getattr(self._local, "shards", None)
        if shards is None:  # one set of open shards per thread: a seek is not thread-safe
            shards = self._local.shards = {}
        return self.index.decode(i, shards)

    def __getstate__(self) -> dict[str, Any]:
        return {"index": self.index, "workers": self.workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["index"], state["workers"])  # type: ignore[misc]


def augment_sample(x: np.ndarray, mode: str, rng: np.random.Generator) -> np.ndarray:
    """x: [C, H, W] uint8 -> the same shape, augmented as ``augment_batch`` augments a sample.

    ``crop``: zero-pad by ``crop_padding(min(H, W))`` and crop back to H x W at a random
    offset; ``crop_flip``: then mirror left-right with probability 0.5."""
    # here, not at the top: compression.training imports this module
    from compression.training.augment import AUGMENTATIONS, crop_padding
    if mode == "none":
        return x
    if mode not in AUGMENTATIONS:
        raise ValueError(f"augment {mode!r} is not one of {', '.join(AUGMENTATIONS)}")
    c, h, w = x.shape
    pad = crop_padding(min(h, w))
    dy, dx = rng.integers(0, 2 * pad + 1, size=2)
    padded = np.zeros((c, h + 2 * pad, w + 2 * pad), x.dtype)
    padded[:, pad:pad + h, pad:pad + w] = x
    out = padded[:, dy:dy + h, dx:dx + w]
    if mode == "crop_flip" and rng.random() < 0.5:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


class SampleDataset(torch.utils.data.Dataset):
    """Map-style dataset over an index: key (sample, epoch, position) -> (x, sample).

    x: [C, H, W] uint8 decoded and augmented, or what ``transform`` makes of it. The job's
    access policy travels with the dataset and is installed in each worker."""

    def __init__(self, index: ImageIndex, augment: str = "none", seed: int = 0,
                 transform: Transform | None = None):
        self.index = index
        self.augment = augment
        self.seed = seed
        self.transform = transform
        self.policy = access.current()
        self._pid, self._shards = os.getpid(), {}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, int]:
        i, epoch, position = key
        if self._pid != os.getpid():  # a forked worker: never share the parent's file offsets
            self._pid, self._shards = os.getpid(), {}
        x = self.index.decode(i, self._shards)
        if self.augment != "none":
            x = augment_sample(x, self.augment, self._rng(epoch, position))
        t = torch.from_numpy(x)
        return (self.transform(t) if self.transform is not None else t), i

    def _rng(self, epoch: int, position: int) -> np.random.Generator:
        return np.random.default_rng([derived_seed(self.seed, f"{epoch}/augment-sample"),
                                      position])


class EpochBatches(Sampler[list[Key]]):
    """This rank's share of each training step: the global batch ``order[lo:hi]`` of the
    epoch (``batch_bounds``), every ``world``-th position from ``rank``. ``set_epoch`` picks
    the epoch; ``order(epoch)`` gives its permutation [N] of sample indices."""

    def __init__(self, n: int, batch_size: int, min_batch: int,
                 order: Callable[[int], torch.Tensor], rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.min_batch = n, batch_size, min_batch
        self.order, self.rank, self.world = order, rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        from compression.training.schedule import steps_per_epoch
        return steps_per_epoch(self.n, self.batch_size, self.min_batch)

    def __iter__(self) -> Iterator[list[Key]]:
        from compression.training.schedule import batch_bounds
        order = self.order(self.epoch).tolist()
        for step in range(len(self)):
            lo, hi = batch_bounds(step, self.n, self.batch_size, self.min_batch)
            yield [(order[p], self.epoch, p) for p in range(lo + self.rank, hi, self.world)]


class OrderedBatches(Sampler[list[Key]]):
    """Samples 0..N-1 in order, ``batch_size`` at a time; with ``world`` > 1 this rank gets
    the batches s with s % world == rank (batch s covers [s * batch_size, ...))."""

    def __init__(self, n: int, batch_size: int, rank: int = 0, world: int = 1):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world

    @property
    def steps(self) -> int:
        """Batches over all ranks."""
        return -(-self.n // self.batch_size)

    def __len__(self) -> int:
        return len(range(self.rank, self.steps, self.world))

    def __iter__(self) -> Iterator[list[Key]]:
        for s in range(self.rank, self.steps, self.world):
            lo = s * self.batch_size
            yield [(i, 0, i) for i in range(lo, min(self.n, lo + self.batch_size))]


def make_loader(dataset: SampleDataset, batches: Sampler[list[Key]], workers: int,
                pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``batches``; yields (x [b, ...], sample indices [b] int64)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      pin_memory=pin_memory, worker_init_fn=_worker_init if workers else None,
                      prefetch_factor=2 if workers else None)


def _worker_init(_: int) -> None:
    info = get_worker_info()
    if info is not None:  # under spawn a worker starts with the default policy: not this job's
        access.install(info.dataset.policy)
