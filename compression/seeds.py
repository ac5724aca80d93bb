"""Seeds derived from the job's seed, one per purpose, so no random draw depends on another."""

from __future__ import annotations

import hashlib

__all__ = ["derived_seed"]


def derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for ``purpose`` (e.g. "student-init", "3/shuffle") under ``seed``."""
    digest = hashlib.sha256(f"{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
