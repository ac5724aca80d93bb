"""Data-parallel (DDP) helpers: joining torchrun's process group, and the global batch.

A job spanning several GPUs or nodes runs one process per GPU under torchrun. Every rank runs
the job up to the end of training, on its share of each global batch; rank 0 (the *primary*)
alone reports, validates, exports and writes files. Decisions that must agree (stop now? which
mitigation?) are taken on the primary and shared, never recomputed per rank.

Gradients are *averaged* over ranks. A loss that normalises by batch-level counts (group-DRO's
per-group means, LTKD's batch group prior) must see the counts of the global batch, or each
rank optimises a different objective. Every helper here is a no-op without an initialised
process group, so single-process code pays nothing.

Convention for losses built on these helpers: the value a rank returns, averaged over ranks,
is the global-batch loss, and so is its gradient once DDP averages it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from compression.events import StopCheck

__all__ = ["is_distributed", "world_size", "rank", "is_primary", "init_from_env", "shutdown",
           "all_reduce_sum", "mean_over_ranks", "batch_mean", "from_primary", "agreed_stop"]

T = TypeVar("T")
# How long a rank waits in a collective for the others: a rank that failed alone (out of
# memory, a file missing on one node) then ends the job in minutes, not gloo's 30.
COLLECTIVE_TIMEOUT = timedelta(minutes=10)


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank; 0 without a process group."""
    return dist.get_rank() if is_distributed() else 0


def is_primary() -> bool:
    """True on rank 0, and in a single process: the rank that reports and writes."""
    return rank() == 0


def init_from_env() -> bool:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); True when joined.

    CPU tensors go through gloo and CUDA tensors through NCCL, so one group serves a job on
    either device; each process takes the GPU of its ``LOCAL_RANK``.
    """
    if is_distributed() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return is_distributed()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=COLLECTIVE_TIMEOUT)
    else:
        dist.init_process_group("gloo", timeout=COLLECTIVE_TIMEOUT)
    return True


def shutdown() -> None:
    """Leave the process group, if any."""
    if is_distributed():
        dist.destroy_process_group()


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` is untouched). Carries no gradient.

    For statistics (counts, teacher masses), not for terms to differentiate. Without a process
    group it returns a detached copy of ``t``. With NCCL ``t`` must live on the rank's GPU.
    """
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def mean_over_ranks(t: Tensor) -> Tensor:
    """The mean of ``t`` over ranks (no gradient); a detached copy in a single process."""
    return all_reduce_sum(t) / world_size()


def from_primary(value: T) -> T:
    """The primary's ``value`` on every rank (a picklable object); ``value`` itself alone."""
    if not is_distributed():
        return value
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def agreed_stop(should_stop: StopCheck) -> StopCheck:
    """A stop check every rank must call at the same points: it turns True on all of them
    together once ``should_stop`` does on any (the primary's asks the service). Without a
    process group, ``should_stop`` itself."""
    if not is_distributed() or getattr(should_stop, "agreed", False):
        return should_stop

    def agreed() -> bool:
        flag = torch.tensor([1.0 if should_stop() else 0.0])  # CPU: the gloo side of the group
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    agreed.agreed = True  # type: ignore[attr-defined]
    return agreed


def batch_mean(values: Tensor) -> Tensor:
    """Mean of per-example ``values`` over the global batch, in the DDP convention above.

    values: [B] this rank's per-example losses -> scalar
    ``world * sum(values) / B_global``: its average over ranks is the global mean even when
    shards differ in size. Single process: ``values.mean()``.
    """
    if not is_distributed():
        return values.mean()
    total = all_reduce_sum(values.new_tensor(float(values.shape[0])))
    return values.sum() * world_size() / total.clamp_min(1.0)
