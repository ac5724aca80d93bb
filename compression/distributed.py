"""Data-parallel helpers for objectives that gather statistics over the whole batch.

Under data parallelism (DDP) each rank holds a shard of the global batch and gradients are
*averaged* over ranks. A loss that normalises by batch-level counts (group-DRO's per-group
means, LTKD's batch group prior) must see the counts of the global batch, or each rank
optimises a different objective. Every helper here is a no-op without an initialised process
group, so single-process code pays nothing.

Convention for losses built on these helpers: the value a rank returns, averaged over ranks,
is the global-batch loss, and so is its gradient once DDP averages it.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor

__all__ = ["is_distributed", "world_size", "all_reduce_sum", "batch_mean"]


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks; 1 without a process group."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over all ranks (a new tensor; ``t`` is untouched). Carries no gradient.

    For statistics (counts, teacher masses), not for terms to differentiate. Without a process
    group it returns a detached copy of ``t``. With NCCL ``t`` must live on the rank's GPU.
    """
    out = t.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


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
