"""Teacher logits for training: computed once and cached, or computed online per batch.

Without augmentation the teacher sees the same inputs every epoch, so one pass over the split
replaces ``epochs`` passes. The cache stores float16: 11 significant bits give a relative error
below 2**-11 (about 4.9e-4, under 1e-3) against the fp32 logits, far below the noise that
distillation already tolerates (a temperature of 2-8 divides logit gaps further), for half the
memory. Logits beyond float16's range (|z| > 65504) are kept in float32 rather than turned to inf.

A cache whose float32 logits (N x K x 4 bytes) would pass ``training.teacher_cache_ram_mib``
spills to a memory-mapped file in the job's work dir (unlinked at once, so nothing is left
behind); its rows are read back per batch and rounded to float16 as the RAM cache is, so both
give the same values. A streamed split is read through DataLoader workers for this pass.

Under torchrun each rank computes one share of the batches (batch s on rank s % world) and the
ranks exchange their logits after every round, so every rank holds the whole cache and the
teacher runs once per sample, not once per rank.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from compression import distributed
from compression.data.stream import (LazyImages, OrderedBatches, SampleDataset, is_streamed,
                                     make_loader)
from compression.errors import Cancelled, StageFailed
from compression.events import Event, EventSink, StopCheck, emit_nothing, never_stop
from compression.training.device import autocast, to_inputs

__all__ = ["TeacherCall", "prepare_teacher", "teacher_logits", "TeacherCache"]

TeacherCall = Callable[[torch.Tensor], torch.Tensor]


def prepare_teacher(teacher: TeacherCall, device: torch.device,
                    channels_last: bool = False) -> TeacherCall:
    """An ``nn.Module`` teacher goes to ``device`` in eval mode (and the channels_last layout);
    other callables, such as loaded checkpoints, are used as they are."""
    if isinstance(teacher, nn.Module):
        teacher.to(device).eval()
        if channels_last:
            teacher.to(memory_format=torch.channels_last)
    return teacher


def teacher_logits(teacher: TeacherCall, inputs: torch.Tensor, stage: str,
                   amp: torch.dtype | None = None) -> torch.Tensor:
    """inputs: [B, C, H, W] float -> logits [B, K] float32, a normal tensor autograd can save."""
    with torch.inference_mode(), autocast(inputs.device, amp):
        logits = teacher(inputs)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or len(logits) != len(inputs):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise StageFailed(stage, f"the teacher returned {shape} for {len(inputs)} inputs; "
                                 "it must return logits [batch, num_classes]")
    # A copy made outside inference mode: inference tensors cannot be saved for backward.
    return logits.to(device=inputs.device, dtype=torch.float32, copy=True)


class TeacherCache:
    """Teacher logits [N, K] of a split, in split order: ``logits`` on the training device,
    or ``spilled``, a float32 [N, K] memory-mapped array read back per batch."""

    def __init__(self, logits: torch.Tensor | None, seconds: float = 0.0, *,
                 spilled: np.ndarray | None = None, half: bool = False,
                 device: torch.device | None = None):
        self.logits = logits
        self.spilled = spilled
        self.half = half  # spilled rows are rounded to float16, as the RAM cache holds them
        self.device = device
        self.seconds = seconds

    def __len__(self) -> int:
        return int((self.logits if self.logits is not None else self.spilled).shape[0])

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        """idx: [B] sample indices on the cache's device -> [B, K] float32."""
        if self.logits is not None:
            return self.logits[idx].float()
        rows = torch.from_numpy(np.asarray(self.spilled[idx.cpu().numpy()]))  # [B, K] float32
        rows = rows.half().float() if self.half else rows
        return rows.to(self.device if self.device is not None else idx.device)

    @classmethod
    def build(cls, teacher: TeacherCall, x: torch.Tensor | LazyImages, *, batch_size: int,
              device: torch.device, amp: torch.dtype | None = None, stage: str = "distill",
              on_event: EventSink = emit_nothing, should_stop: StopCheck = never_stop,
              progress_every: int = 20, channels_last: bool = False,
              ram_bytes: int | None = None, spill_dir: Path | None = None) -> "TeacherCache":
        """Run ``teacher`` once over x: [N, C, H, W] uint8 (in memory or streamed), in order,
        ``batch_size`` at a time; each rank runs its share of the batches.

        ram_bytes: the most the float32 logits may take in memory (None: no limit); beyond it
        they go to a file in ``spill_dir`` (default: the system's temporary folder).
        Emits ``progress`` events with ``phase: teacher_cache`` every ``progress_every``
        rounds and at the end; raises ``Cancelled`` when ``should_stop()`` turns True.
        """
        start, n = time.perf_counter(), len(x)
        plan = OrderedBatches(n, batch_size, distributed.rank(), distributed.world_size())
        rounds = -(-plan.steps // plan.world)
        mine = _batches(x, plan, device, channels_last)
        store: _Store | None = None
        for r in range(rounds):
            if should_stop():
                raise Cancelled(f"{stage}: cancelled while caching teacher logits")
            batch = next(mine, None)  # [b, C, H, W] float, or None past this rank's share
            logits = None if batch is None else teacher_logits(teacher, batch, stage, amp)
            store = store or _Store.create(n, _num_classes(logits), ram_bytes, spill_dir, device)
            _exchange(store, plan, r, logits)
            if (r + 1) % progress_every == 0 or r + 1 == rounds:
                done = min(n, (r + 1) * plan.world * batch_size)
                on_event(Event("progress", stage, {
                    "phase": "teacher_cache", "step": r + 1, "steps": rounds,
                    "samples": done, "samples_per_s": done / _elapsed(start)}))
        assert store is not None  # n >= 1: at least one round
        return store.finish(time.perf_counter() - start)


def _batches(x: torch.Tensor | LazyImages, plan: OrderedBatches, device: torch.device,
             channels_last: bool) -> Iterator[torch.Tensor]:
    """This rank's batches of ``plan`` as float inputs [b, C, H, W] on ``device``."""
    if is_streamed(x):
        loader = make_loader(SampleDataset(x.index), plan, x.workers, device.type == "cuda")
        raw: Iterator[torch.Tensor] = (xb for xb, _ in loader)
    else:
        raw = (x[keys[0][0]:keys[-1][0] + 1] for keys in plan)
    for xb in raw:
        batch = to_inputs(xb.to(device, non_blocking=True))
        yield batch.contiguous(memory_format=torch.channels_last) if channels_last else batch


def _num_classes(logits: torch.Tensor | None) -> int:
    """K, agreed by every rank (rank 0 always has the first batch)."""
    return distributed.from_primary(None if logits is None else int(logits.shape[1]))


def _exchange(store: "_Store", plan: OrderedBatches, r: int, logits: torch.Tensor | None) -> None:
    """Every rank's logits of round ``r`` into ``store``: batch r * world + j from rank j."""
    size = plan.batch_size
    if not distributed.is_distributed():
        store.write(r * size, logits)
        return
    padded = torch.zeros(size, store.k, device=store.device)
    if logits is not None:
        padded[:len(logits)] = logits
    parts = [torch.empty_like(padded) for _ in range(plan.world)]
    dist.all_gather(parts, padded)
    for j, part in enumerate(parts):
        s = r * plan.world + j
        if s < plan.steps:
            lo = s * size
            store.write(lo, part[:min(plan.n, lo + size) - lo])


class _Store:
    """Where the logits go while they are computed: a float32 tensor on the device, or a
    float32 memory-mapped file when that would pass the RAM budget."""

    def __init__(self, n: int, k: int, device: torch.device, spilled: np.ndarray | None):
        self.k, self.device, self.spilled = k, device, spilled
        self.ram = None if spilled is not None else torch.empty(n, k, device=device)
        self.fits_half = True  # every value finite and within float16's range so far

    @classmethod
    def create(cls, n: int, k: int, ram_bytes: int | None, spill_dir: Path | None,
               device: torch.device) -> "_Store":
        if ram_bytes is None or n * k * 4 <= ram_bytes:
            return cls(n, k, device, None)
        return cls(n, k, device, _spill_file(n, k, spill_dir))

    def write(self, lo: int, logits: torch.Tensor) -> None:
        """logits: [b, K] float32, the rows from ``lo`` on."""
        self.fits_half &= bool(logits.isfinite().all()
                               and logits.abs().max() <= torch.finfo(torch.float16).max)
        if self.ram is not None:
            self.ram[lo:lo + len(logits)] = logits
        else:
            self.spilled[lo:lo + len(logits)] = logits.cpu().numpy()

    def finish(self, seconds: float) -> TeacherCache:
        if self.ram is not None:
            return TeacherCache(self.ram.half() if self.fits_half else self.ram, seconds)
        self.spilled.flush()
        return TeacherCache(None, seconds, spilled=self.spilled, half=self.fits_half,
                            device=self.device)


def _spill_file(n: int, k: int, spill_dir: Path | None) -> np.ndarray:
    """A float32 [n, k] array backed by a new file in ``spill_dir``, already unlinked: the
    mapping keeps it alive and nothing stays on disk once the process lets it go."""
    folder = Path(spill_dir) if spill_dir is not None else Path(tempfile.gettempdir())
    folder.mkdir(parents=True, exist_ok=True)
    fd, path = tempfile.mkstemp(dir=folder, prefix=".teacher-logits-", suffix=".f32")
    try:
        os.ftruncate(fd, max(1, n * k * 4))
        return np.memmap(path, np.float32, "r+", shape=(n, k))
    finally:
        os.close(fd)
        os.unlink(path)


def _elapsed(start: float) -> float:
    return max(time.perf_counter() - start, 1e-9)
