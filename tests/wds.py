"""WebDataset shards for tests: tar files of PNG images with .cls (and .group) members."""

from __future__ import annotations

import io
import tarfile
from typing import Iterable

import numpy as np
from PIL import Image

__all__ = ["png", "shard", "bars_samples"]


def png(pixels: np.ndarray) -> bytes:
    """pixels: [H, W] (gray) or [H, W, 3] uint8, as PNG bytes."""
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def shard(samples: Iterable[tuple[str, dict[str, bytes]]]) -> bytes:
    """An uncompressed tar: for each (key, {ext: bytes}) the members key.ext, in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for key, fields in samples:
            for ext, data in fields.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def bars_samples(n: int, num_classes: int, seed: int, start: int = 0,
                 groups: bool = False) -> list[tuple[str, dict[str, bytes]]]:
    """Class c lights up a horizontal bar at row 2c of an 8x8 image, plus noise (the
    integration tests' bars, as WebDataset samples)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(start, start + n):
        c = i % num_classes
        x = rng.integers(0, 60, size=(8, 8))
        x[2 * c, :] += 180
        fields = {"png": png(x.clip(0, 255).astype(np.uint8)), "cls": str(c).encode()}
        if groups:
            fields["group"] = ("even" if i % 2 == 0 else "odd").encode()
        out.append((f"sample{i:06d}", fields))
    return out
