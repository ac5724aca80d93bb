"""One subgroup's accuracy against one floor: the statistical core of every guardrail verdict.

A guardrail promises that no subgroup is worse than its floor, so the burden of proof is on
the model:

- FAIL when the measured accuracy is below the floor. With fewer than ``min_samples`` test
  samples a point estimate is too noisy to condemn a subgroup on, so there it fails only
  when its whole 95% Wilson interval lies below the floor.
- PASS when the whole 95% Wilson interval lies at or above the floor.
- INSUFFICIENT_EVIDENCE otherwise: no samples, fewer than ``min_samples``, or an accuracy
  that meets the floor while its interval reaches below it.

A measured accuracy below the floor is never merely "insufficient evidence": otherwise
turning ``block_on_insufficient_evidence`` off would let a subgroup measured ten points under
its floor ship.
"""

from __future__ import annotations

from typing import Iterable

from compression.evaluation.report import GroupMetrics
from compression.spec import GuardrailSpec

__all__ = [
    "PASS", "FAIL", "INSUFFICIENT_EVIDENCE", "VERDICTS", "TOLERANCE", "severity", "worst",
    "accuracy_verdict", "absolute_floor", "judging_rules", "pct",
]

PASS, FAIL, INSUFFICIENT_EVIDENCE = "PASS", "FAIL", "INSUFFICIENT_EVIDENCE"
VERDICTS = (PASS, INSUFFICIENT_EVIDENCE, FAIL)  # least to most severe
# Floors computed as differences (teacher 0.8 - drop 0.1) land a hair off the decimal the
# user meant; a subgroup measured exactly at 0.7 must meet that floor.
TOLERANCE = 1e-9


def severity(verdict: str) -> int:
    """0 for PASS, 1 for INSUFFICIENT_EVIDENCE, 2 for FAIL."""
    return VERDICTS.index(verdict)


def worst(verdicts: Iterable[str]) -> str:
    """The most severe of ``verdicts``; PASS when there are none."""
    return max(verdicts, key=severity, default=PASS)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def accuracy_verdict(m: GroupMetrics, floor: float | None, min_samples: int) -> tuple[str, str]:
    """Judge ``m.accuracy`` against ``floor``; return (verdict, reason in words).

    ``floor`` may be None only for an empty group (a relative floor has no reference there).
    """
    if m.n == 0 or m.accuracy is None or floor is None:
        return INSUFFICIENT_EVIDENCE, "no test samples, so nothing can be said about it"
    seen = f"{pct(m.accuracy)} ({m.correct}/{m.n}, 95% CI {pct(m.ci_low)}-{pct(m.ci_high)})"
    if floor <= TOLERANCE:
        return PASS, f"{seen}; the floor is {pct(floor)}, which any accuracy meets"
    if m.ci_high < floor - TOLERANCE:
        return FAIL, f"{seen} is below the floor {pct(floor)} with 95% confidence"
    if m.n < min_samples:
        return INSUFFICIENT_EVIDENCE, (f"{seen} rests on {m.n} test samples, fewer than "
                                       f"min_samples ({min_samples}); floor {pct(floor)}")
    if m.accuracy < floor - TOLERANCE:
        return FAIL, f"{seen} is below the floor {pct(floor)}"
    if m.ci_low >= floor - TOLERANCE:
        return PASS, f"{seen} is at or above the floor {pct(floor)} with 95% confidence"
    return INSUFFICIENT_EVIDENCE, (f"{seen} meets the floor {pct(floor)} but its interval "
                                   "reaches below it; more test samples would settle it")


def absolute_floor(policy: GuardrailSpec, group: str) -> float:
    """The absolute floor of ``group``: its override if it has one, else ``min_accuracy``."""
    override = policy.min_accuracy_by_group.get(group)
    return policy.min_accuracy if override is None else override


def judging_rules(policy: GuardrailSpec, group: str) -> list[str]:
    """Names of the rules that judge ``group``; a floor of 0 judges nothing."""
    rules = []
    if absolute_floor(policy, group) > 0:
        rules.append(f"min_accuracy_by_group.{group}" if group in policy.min_accuracy_by_group
                     else "min_accuracy")
    rules += [name for name in ("max_drop_vs_teacher", "max_drop_vs_one_hot",
                                "min_worst_group_accuracy", "max_group_gap")
              if getattr(policy, name) is not None]
    return rules
