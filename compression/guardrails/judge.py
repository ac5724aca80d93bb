"""Judge one stage's evaluation report against the guardrail policy.

Every active rule is applied to every subgroup, each as a test (``evidence``): absolute
floors with a one-sample Wilson score test; drops against the teacher, the one-hot student
or (for an exported artifact) the student with a paired Tango score test on the examples
both models answered; the best-worst gap with a two-sample Newcombe test, since two
subgroups of one model share no examples. The harm p-values of every check of the stage
form one family, adjusted by the policy's multiplicity method (``multiplicity``). With
several subgroup keys, every key's groups and every intersection are judged, in that one
family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from compression.evaluation.outcomes import paired_counts
from compression.evaluation.report import EvalReport, GroupMetrics
from compression.guardrails.evidence import Evidence, OneSample, Paired, TwoSample
from compression.guardrails.multiplicity import adjust
from compression.guardrails.rules import (DROP_RULES, FAIL, INSUFFICIENT_EVIDENCE,
                                          absolute_floor, alpha_of, decide, explain, pct, pp,
                                          severity, worst)
from compression.guardrails.verdict import Check, GroupResult, StageVerdict
from compression.spec import GuardrailSpec

__all__ = ["judge", "decide_family", "advisory_subgroups", "WHOLE_MODEL_RULES"]

WHOLE_MODEL_RULES = ("min_worst_group_accuracy", "max_group_gap")


@dataclass(frozen=True)
class _Planned:
    """One rule on one subgroup before the family is adjusted; evidence None when empty."""

    rule: str
    group: GroupMetrics
    evidence: Evidence | None
    floor: float | None  # in accuracy units, for readers: reference - margin, or the floor
    reference: float | None = None


def judge(report: EvalReport, policy: GuardrailSpec, stage: str, *,
          teacher: EvalReport | None = None, one_hot: EvalReport | None = None,
          student: EvalReport | None = None) -> StageVerdict:
    """Apply every active rule of ``policy`` to every subgroup of ``report``.

    teacher / one_hot / student: reports on the same examples, with their in-memory
        outcomes, required when the policy sets max_drop_vs_teacher / max_drop_vs_one_hot;
        ``student`` marks the stage as an exported artifact judged by max_drop_vs_student.
        A missing or unpaired reference is a caller bug: ``ValueError``.
    """
    planned = _plan(report, policy, {"max_drop_vs_teacher": teacher,
                                     "max_drop_vs_one_hot": one_hot,
                                     "max_drop_vs_student": student})
    tested = [p for p in planned if p.evidence is not None]
    decided = dict(zip(map(id, tested), decide_family([p.evidence for p in tested], policy)))
    per_group = [_check(p, decided.get(id(p)), policy) for p in planned]
    groups = tuple(_group_result(m, [c for c in per_group if c.subgroup == m.name])
                   for m in report.groups)
    advisory = advisory_subgroups(report, policy)
    checks: list[Check] = []
    for rule in dict.fromkeys(p.rule for p in planned):
        rule_checks = [c for c in per_group if c.rule == rule]
        checks += ([_decisive(rule, rule_checks, advisory)] if rule in WHOLE_MODEL_RULES
                   else rule_checks)
    return StageVerdict(stage, tuple(checks), groups, policy.block_on_insufficient_evidence,
                        confidence=policy.confidence, multiplicity=policy.multiplicity,
                        family_size=len(tested), advisory_subgroups=advisory)


def advisory_subgroups(report: EvalReport, policy: GuardrailSpec) -> tuple[str, ...]:
    """Intersections with fewer than ``min_samples`` test examples: judged like every
    subgroup (a harm shown there FAILs), but their INSUFFICIENT_EVIDENCE does not block.
    Such a cell cannot be shown safe, and most crossings have some; blocking on them would
    reject every job that crosses keys, or make preflight refuse it."""
    return tuple(g.name for g in report.groups
                 if g.is_intersection and g.n < policy.min_samples)


def decide_family(evidence: Sequence[Evidence],
                  policy: GuardrailSpec) -> list[tuple[str, float]]:
    """(verdict, FAIL threshold) of every check of one stage, tested as one family.

    This is the whole decision of a stage; ``judge`` adds intervals, detectable effects
    and words around it. The gate's calibration is measured on this function.
    """
    alpha = alpha_of(policy)
    adjusted = adjust([ev.p_harm() for ev in evidence], alpha, policy.multiplicity)
    return [(decide(ev, rejected, alpha, policy.min_samples), threshold)
            for ev, (threshold, rejected) in zip(evidence, adjusted)]


def _plan(report: EvalReport, policy: GuardrailSpec,
          references: dict[str, EvalReport | None]) -> list[_Planned]:
    out = [_one_sample("min_accuracy", m, absolute_floor(policy, m.name))
           for m in report.groups if absolute_floor(policy, m.name) > 0]
    for rule in DROP_RULES:
        margin = getattr(policy, rule)
        if margin is not None and (rule != "max_drop_vs_student"
                                   or references[rule] is not None):
            out += _paired(rule, report, _checked_reference(rule, report, references[rule]),
                           margin)
    if policy.min_worst_group_accuracy is not None:
        out += [_one_sample("min_worst_group_accuracy", m, policy.min_worst_group_accuracy)
                for m in report.groups]
    if policy.max_group_gap is not None:
        out += _gaps(report, policy.max_group_gap, policy.min_samples)
    return out


def _one_sample(rule: str, m: GroupMetrics, floor: float) -> _Planned:
    return _Planned(rule, m, OneSample(m.correct, m.n, floor) if m.n else None, floor)


def _paired(rule: str, report: EvalReport, ref: EvalReport, margin: float) -> list[_Planned]:
    counts = paired_counts(ref.outcomes, report.outcomes)
    out = []
    for i, (m, r) in enumerate(zip(report.groups, ref.groups)):
        if rule == "max_drop_vs_student" and not m.n:
            continue  # an artifact is compared where its student was; the student's checks
            # already speak for an empty subgroup
        ev = Paired(counts.b[i], counts.c[i], m.n, margin) if m.n else None
        floor = None if r.accuracy is None else max(0.0, r.accuracy - margin)
        out.append(_Planned(rule, m, ev, floor, r.accuracy))
    return out


def _checked_reference(rule: str, report: EvalReport, ref: EvalReport | None) -> EvalReport:
    if ref is None:
        raise ValueError(f"the policy sets {rule} but no reference report was given; "
                         "evaluate the reference model on the test split and pass it")
    ours = [(g.name, g.n) for g in report.groups]
    theirs = [(g.name, g.n) for g in ref.groups]
    if ours != theirs:
        raise ValueError(f"{rule}: reference report {ref.name!r} has subgroups and sizes "
                         f"{theirs} but {report.name!r} has {ours}; both must be scored on the "
                         "same test split")
    if ref.outcomes is None or report.outcomes is None:
        raise ValueError(f"{rule} is a paired test and needs the per-example outcomes of "
                         f"{ref.name!r} and {report.name!r}; pass reports from evaluate(), "
                         "not ones read back from JSON")
    return ref


def _gaps(report: EvalReport, gap: float, min_samples: int) -> list[_Planned]:
    """Every subgroup against the best one, which has min_samples samples if any does:
    a tiny subgroup that happens to score 100% would otherwise raise every other floor."""
    scored = [g for g in report.groups if g.n]
    best = max([g for g in scored if g.n >= min_samples] or scored, key=lambda g: g.accuracy,
               default=None)
    out = []
    for m in report.groups:
        if best is None or not m.n:
            out.append(_Planned("max_group_gap", m, None, None))
            continue
        # The best subgroup against itself: the same answers, a gap of exactly 0.
        ev = (Paired(0, 0, m.n, gap) if m is best
              else TwoSample(best.correct, best.n, m.correct, m.n, gap))
        out.append(_Planned("max_group_gap", m, ev, max(0.0, best.accuracy - gap),
                            best.accuracy))
    return out


def _check(p: _Planned, decided: tuple[str, float] | None, policy: GuardrailSpec) -> Check:
    m, ev = p.group, p.evidence
    base = dict(rule=p.rule, subgroup=m.name, value=m.accuracy, floor=p.floor,
                ci=(m.ci_low, m.ci_high), n=m.n, reference=p.reference)
    if ev is None or decided is None:
        return Check(**base, verdict=INSUFFICIENT_EVIDENCE,
                     message=f"{p.rule} on {m.name!r}: no test samples, so nothing can be said "
                             "about it")
    verdict, threshold = decided
    interval = ev.bounds(alpha_of(policy), threshold)
    why = explain(ev, verdict, interval, threshold, policy.confidence, policy.min_samples)
    return Check(**base, verdict=verdict,
                 message=f"{p.rule} on {m.name!r}: {_measured(p, ev)}; {why}",
                 estimate=ev.estimate, margin=ev.margin, interval=interval,
                 p_value=ev.p_harm(), threshold=threshold, b=ev.b, c=ev.c,
                 mde=_rounded(ev.mde(threshold)), method=ev.method)


def _rounded(value: float | None) -> float | None:
    # mde is a difference of fractions: 0.1 rather than 0.10000000000000009 in reports.
    return None if value is None else round(value, 12)


def _measured(p: _Planned, ev: Evidence) -> str:
    """What was measured, so a reader can redo the arithmetic."""
    m = p.group
    seen = f"{pct(m.accuracy)} ({m.correct}/{m.n})"
    if isinstance(ev, OneSample):
        return f"accuracy {seen}, floor {pct(ev.margin)}"
    source = DROP_RULES.get(p.rule, "best subgroup")
    pairs = f", b={ev.b} c={ev.c}" if isinstance(ev, Paired) else ""
    what = "drop" if p.rule in DROP_RULES else "gap"
    return (f"{seen} vs the {source}'s {pct(p.reference)}: {what} {pp(ev.estimate)}{pairs}, "
            f"allowed {pp(ev.margin)}")


def _decisive(rule: str, checks: Sequence[Check], advisory: Sequence[str] = ()) -> Check:
    """The check that decides a whole-model rule: most severe, then lowest accuracy; an
    INSUFFICIENT_EVIDENCE that blocks comes before one on an advisory subgroup."""
    def key(c: Check) -> tuple[int, bool, float]:
        return (severity(c.verdict), c.subgroup not in advisory,
                -(c.value if c.value is not None else -1.0))
    chosen = max(checks, key=key)
    failing = sum(c.verdict == FAIL for c in checks)
    tail = f" ({failing} of {len(checks)} subgroups fail it)" if failing > 1 else ""
    return dataclasses.replace(chosen, message=f"{chosen.message}{tail}")


def _group_result(m: GroupMetrics, checks: list[Check]) -> GroupResult:
    """The subgroup's row: its highest floor and its most severe verdict over all rules."""
    floors = [c.floor for c in checks if c.floor is not None]
    return GroupResult(name=m.name, n=m.n, accuracy=m.accuracy, ci=(m.ci_low, m.ci_high),
                       floor=max(floors, default=None),
                       verdict=worst(c.verdict for c in checks) if checks else None,
                       keys=m.keys)
