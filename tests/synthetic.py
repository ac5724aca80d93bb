"""Tiny image data that small models learn in a few steps, shared by tests."""

import torch

from compression.data.dataset import Split


def row_bars(n: int, seed: int, shape: tuple[int, int, int]) -> Split:
    """10 classes; class k is a bright row at height k + 1 on noise; group = class parity."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randint(0, 60, (n, *shape), generator=g)
    x[torch.arange(n), 0, y + 1, :] = 250
    return Split(x.to(torch.uint8), y, y % 2)
