"""Are two study calls the same? Every run's saved test outcomes, compared one by one.

A run's ``outcomes.npz`` holds, per test example, whether it was right (``hit``), its label
and its subgroup. Two calls agree on a run when all three arrays are equal: the same answer
on every test example, which is what the study's tables are computed from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Comparison", "compare_outcomes"]

OUTCOMES = "outcomes.npz"


@dataclass
class Comparison:
    """Run folders (relative to the compared roots) by what the comparison found."""

    same: list[str] = field(default_factory=list)
    differ: list[str] = field(default_factory=list)
    only_here: list[str] = field(default_factory=list)
    only_there: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return bool(self.same) and not (self.differ or self.only_here or self.only_there)

    def summary(self) -> str:
        return (f"{len(self.same)} runs answer every test example alike, {len(self.differ)} "
                f"differ, {len(self.only_here)} only here, {len(self.only_there)} only there"
                + "".join(f"\n  differ: {d}" for d in self.differ))


def compare_outcomes(here: Path, there: Path) -> Comparison:
    """Compare every ``outcomes.npz`` under ``here`` with the one at the same relative path
    under ``there``."""
    mine, theirs = _runs(here), _runs(there)
    result = Comparison(only_here=sorted(mine - theirs), only_there=sorted(theirs - mine))
    for run in sorted(mine & theirs):
        (result.same if _equal(here / run, there / run) else result.differ).append(run)
    return result


def _runs(root: Path) -> set[str]:
    return {str(p.parent.relative_to(root)) for p in root.rglob(OUTCOMES)}


def _equal(a: Path, b: Path) -> bool:
    with np.load(a / OUTCOMES) as x, np.load(b / OUTCOMES) as y:
        return sorted(x.files) == sorted(y.files) and all(
            np.array_equal(x[k], y[k]) for k in x.files)
