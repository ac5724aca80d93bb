"""Which rules judge a subgroup, and how one check's tests become a verdict.

A guardrail check asks two one-sided questions of its evidence (``evidence``):

- FAIL when harm is shown: the harm p-value is at or below the check's threshold, which
  the stage's multiplicity method sets so that the chance of any false FAIL in the stage
  is at most 1 - confidence (``multiplicity``).
- PASS when safety is shown: the safe p-value is at or below 1 - confidence, i.e. the
  one-sided ``confidence`` bound lies on the right side of the floor or margin.
- INSUFFICIENT_EVIDENCE otherwise, and also instead of a PASS when the subgroup has fewer
  than ``min_samples`` test samples (a FAIL shown on a small subgroup still stands).

Two models that agree on every example of a subgroup differ there by exactly zero, so a
drop rule with a margin >= 0 PASSes however small the subgroup: no sampling noise enters
a comparison of identical answers.
"""

from __future__ import annotations

from typing import Iterable

from compression.guardrails.evidence import Evidence, Paired
from compression.spec import GuardrailSpec

__all__ = [
    "PASS", "FAIL", "INSUFFICIENT_EVIDENCE", "VERDICTS", "TOLERANCE", "DROP_RULES", "severity",
    "worst", "alpha_of", "decide", "explain", "absolute_floor", "judging_rules", "pct", "pp",
]

PASS, FAIL, INSUFFICIENT_EVIDENCE = "PASS", "FAIL", "INSUFFICIENT_EVIDENCE"
VERDICTS = (PASS, INSUFFICIENT_EVIDENCE, FAIL)  # least to most severe
# Floors in accuracy units computed as differences land a hair off the decimal meant.
TOLERANCE = 1e-9
# rule -> the reference it compares with, in words; each is a paired test. For
# max_drop_vs_student the reference is the student the artifact was exported from.
DROP_RULES = {"max_drop_vs_teacher": "teacher", "max_drop_vs_one_hot": "one-hot student",
              "max_drop_vs_student": "student"}


def severity(verdict: str) -> int:
    """0 for PASS, 1 for INSUFFICIENT_EVIDENCE, 2 for FAIL."""
    return VERDICTS.index(verdict)


def worst(verdicts: Iterable[str]) -> str:
    """The most severe of ``verdicts``; PASS when there are none."""
    return max(verdicts, key=severity, default=PASS)


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def pp(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} pp"


def alpha_of(policy: GuardrailSpec) -> float:
    """1 - confidence, rounded so that 0.95 gives 0.05 and not 0.050000000000000044."""
    return round(1 - policy.confidence, 12)


def decide(ev: Evidence, rejected: bool, alpha: float, min_samples: int) -> str:
    """The verdict of one check: ``rejected`` says whether its harm test was rejected after
    the multiplicity adjustment; ``alpha`` = 1 - confidence."""
    if rejected:
        return FAIL
    if isinstance(ev, Paired) and ev.identical and ev.margin >= 0:
        return PASS
    if ev.n < min_samples:
        return INSUFFICIENT_EVIDENCE
    return PASS if ev.p_safe() <= alpha else INSUFFICIENT_EVIDENCE


def explain(ev: Evidence, verdict: str, interval: tuple[float, float], threshold: float,
            confidence: float, min_samples: int) -> str:
    """Why ``verdict``, in words, with the numbers that decided it."""
    level = f"{100 * confidence:g}%"
    harm_level = f"{100 * (1 - threshold):.4g}%"
    if isinstance(ev, Paired) and ev.identical:
        return (f"both models give the same answer on all {ev.n} examples, so the drop is "
                "exactly 0")
    low, high = interval
    unit = pp if ev.harm_above else pct
    # Drops and gaps harm when high: the upper bound must clear the margin to PASS and the
    # lower bound to FAIL. Accuracies harm when low: the other way round.
    safe, harm = ((f"upper bound {unit(high)}", f"lower bound {unit(low)}") if ev.harm_above
                  else (f"lower bound {unit(low)}", f"upper bound {unit(high)}"))
    side, beyond = ("under", "above") if ev.harm_above else ("at or above", "under")
    margin = unit(ev.margin)
    if verdict == FAIL:
        return (f"harm shown: the one-sided {harm_level} {harm} is {beyond} {margin} "
                f"(p = {ev.p_harm():.3g} <= {threshold:.3g})")
    if verdict == PASS:
        return f"the one-sided {level} {safe} is {side} {margin}"
    if ev.n < min_samples:
        return (f"rests on {ev.n} test samples, fewer than min_samples ({min_samples}); "
                f"the one-sided {level} {safe}")
    return (f"neither shown: the one-sided {level} {safe} is not {side} {margin} and harm has "
            f"p = {ev.p_harm():.3g} > {threshold:.3g}; more test samples would settle it")


def absolute_floor(policy: GuardrailSpec, group: str) -> float:
    """The absolute floor of ``group``: its override if it has one, else ``min_accuracy``."""
    override = policy.min_accuracy_by_group.get(group)
    return policy.min_accuracy if override is None else override


def judging_rules(policy: GuardrailSpec, group: str, *, artifact: bool = False) -> list[str]:
    """Names of the rules that judge ``group``; a floor of 0 judges nothing.

    artifact: the stage is an exported artifact, also judged against its student.
    """
    rules = []
    if absolute_floor(policy, group) > 0:
        rules.append(f"min_accuracy_by_group.{group}" if group in policy.min_accuracy_by_group
                     else "min_accuracy")
    rules += [name for name in ("max_drop_vs_teacher", "max_drop_vs_one_hot")
              if getattr(policy, name) is not None]
    if artifact and policy.max_drop_vs_student is not None:
        rules.append("max_drop_vs_student")
    rules += [name for name in ("min_worst_group_accuracy", "max_group_gap")
              if getattr(policy, name) is not None]
    return rules
