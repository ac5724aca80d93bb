"""Batch-wise augmentation on the training device, driven by a seeded generator.

Working on whole uint8 batches where they already live (the GPU when there is one) keeps
augmentation off the critical path without DataLoader workers, and a seeded generator makes it
replayable: the same (seed, epoch) gives the same crops and flips, which exact resume relies on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compression.errors import InvalidInput

__all__ = ["AUGMENTATIONS", "crop_padding", "augment_batch"]

AUGMENTATIONS = ("none", "crop", "crop_flip")


def crop_padding(size: int) -> int:
    """Zero padding before a random crop: size/8 rounded (4 for 28-32 px, the CIFAR recipe)."""
    return max(1, (size + 4) // 8)


def augment_batch(x: torch.Tensor, mode: str, generator: torch.Generator,
                  keep: slice = slice(None)) -> torch.Tensor:
    """Augment a batch; ``mode`` is one of ``AUGMENTATIONS``.

    x: [B, C, H, W] (any dtype, usually uint8) on ``generator``'s device -> x[keep] augmented.
    ``crop``: zero-pad by ``crop_padding(min(H, W))`` and crop back to H x W at a random offset
    per sample. ``crop_flip``: then mirror each sample left-right with probability 0.5.
    The draws are made for all B samples whatever ``keep`` is, so a rank augmenting only its
    share of a batch gets the very crops and flips one process would give those samples.
    """
    if mode == "none":
        return x if keep == slice(None) else x[keep]
    if mode not in AUGMENTATIONS:
        raise InvalidInput(f"training.augment {mode!r} is not one of {', '.join(AUGMENTATIONS)}")
    pad, b = crop_padding(min(x.shape[-2:])), x.shape[0]
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=generator, device=x.device)
    x = _crop(x[keep], pad, offsets[:, keep])
    if mode == "crop_flip":
        flip = torch.rand(b, generator=generator, device=x.device)[keep] < 0.5  # [b]
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def _crop(x: torch.Tensor, pad: int, offsets: torch.Tensor) -> torch.Tensor:
    """x: [B, C, H, W]; offsets: [2, B] (dy, dx) in [0, 2 * pad] -> [B, C, H, W]."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)).permute(0, 2, 3, 1)  # [B, H+2p, W+2p, C]
    dy, dx = offsets
    rows = dy[:, None] + torch.arange(h, device=x.device)  # [B, H]
    cols = dx[:, None] + torch.arange(w, device=x.device)  # [B, W]
    batch = torch.arange(b, device=x.device)[:, None, None]
    out = padded[batch, rows[:, :, None], cols[:, None, :]]  # [B, H, W, C]
    return out.permute(0, 3, 1, 2).contiguous()
