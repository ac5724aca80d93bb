"""``mitigation.name: auto``: train each candidate briefly and keep the best that passes.

The caller supplies how to train and score a candidate (the pipeline trains for
``selection_epochs`` and evaluates on HOLDOUT, never on test, so the choice does not leak the
test split) and how to judge a report against the guardrails (the pipeline uses the same
paired tests as on test, against the teacher's and the one-hot baseline's holdout answers).
Rule: the most accurate candidate (overall holdout accuracy) among those that pass; when none
passes, the one with the best worst-group accuracy, marked ``met_floors=False``. Ties go to
the earlier candidate. Each candidate records its verdict and the checks that decided it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from compression.errors import InvalidInput
from compression.evaluation import EvalReport
from compression.guardrails import Check, StageVerdict
from compression.losses.registry import AUTO, check_mitigation
from compression.spec import MitigationSpec, spec_to_dict

__all__ = ["CandidateScore", "Selection", "choose_mitigation"]


@dataclass(frozen=True)
class CandidateScore:
    """One trained candidate: its spec, its holdout scores and its guardrail verdict.

    deciding: the checks that decided the verdict: those that kept it from passing, or,
        when it passed, the one closest to failing (the largest harm p-value relative to
        its threshold is the farthest from FAIL, so the smallest is the closest).
    """

    spec: MitigationSpec
    accuracy: float | None
    worst_group: str | None
    worst_group_accuracy: float | None
    passed: bool
    verdict: str = "PASS"
    deciding: tuple[Check, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.spec.name, "spec": spec_to_dict(self.spec),
                "accuracy": self.accuracy, "worst_group": self.worst_group,
                "worst_group_accuracy": self.worst_group_accuracy, "passed": self.passed,
                "verdict": self.verdict,
                "deciding_checks": [_brief(c) for c in self.deciding]}


@dataclass(frozen=True)
class Selection:
    """chosen: the spec to train in full; index: its position among ``candidates``."""

    chosen: MitigationSpec
    index: int
    met_floors: bool
    candidates: tuple[CandidateScore, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen.name, "chosen_index": self.index,
                "met_floors": self.met_floors, "split": "holdout",
                "rule": "most accurate passing candidate; if none passes, best worst-group",
                "candidates": [c.to_dict() for c in self.candidates]}


def choose_mitigation(candidates: Sequence[MitigationSpec],
                      train_candidate: Callable[[MitigationSpec], EvalReport],
                      gate: Callable[[EvalReport], StageVerdict]) -> Selection:
    """Train every candidate with ``train_candidate``, judge it with ``gate`` and pick one
    (see the module docstring).

    Every candidate's name and params are checked before any training starts.
    """
    _check(candidates)
    scores = tuple(_score(spec, train_candidate(spec), gate) for spec in candidates)
    passing = [i for i, s in enumerate(scores) if s.passed]
    if passing:
        index = max(passing, key=lambda i: (_value(scores[i].accuracy), -i))
    else:
        index = max(range(len(scores)), key=lambda i: (
            _value(scores[i].worst_group_accuracy), _value(scores[i].accuracy), -i))
    return Selection(chosen=candidates[index], index=index, met_floors=bool(passing),
                     candidates=scores)


def _score(spec: MitigationSpec, report: EvalReport,
           gate: Callable[[EvalReport], StageVerdict]) -> CandidateScore:
    worst = report.worst_group
    verdict = gate(report)
    return CandidateScore(spec=spec, accuracy=report.overall.accuracy,
                          worst_group=worst.name if worst else None,
                          worst_group_accuracy=worst.accuracy if worst else None,
                          passed=verdict.passed, verdict=verdict.verdict,
                          deciding=_deciding(verdict))


def _deciding(verdict: StageVerdict) -> tuple[Check, ...]:
    if not verdict.passed:
        return verdict.failing_checks
    tested = [c for c in verdict.checks if c.p_value is not None and c.threshold]
    closest = min(tested, key=lambda c: c.p_value / c.threshold, default=None)
    return () if closest is None else (closest,)


def _brief(check: Check) -> dict[str, Any]:
    """The fields a reader needs to see why; the full check lives in the stage verdicts."""
    return {"rule": check.rule, "subgroup": check.subgroup, "verdict": check.verdict,
            "estimate": check.estimate, "margin": check.margin, "p_value": check.p_value,
            "threshold": check.threshold, "message": check.message}


def _value(score: float | None) -> float:
    return -1.0 if score is None else score  # an unscored candidate ranks last


def _check(candidates: Sequence[MitigationSpec]) -> None:
    if not candidates:
        raise InvalidInput("mitigation.candidates is empty; list at least one, e.g. "
                           "[{name: kd}, {name: adaptive_alpha}]")
    nested = [i for i, c in enumerate(candidates) if c.name == AUTO]
    if nested:
        raise InvalidInput(f"mitigation.candidates{nested}: a candidate cannot itself be 'auto'")
    check_mitigation(MitigationSpec(name=AUTO, candidates=tuple(candidates)))
