"""Judge one stage's evaluation report against the guardrail policy.

Relative floors (max drop vs the teacher or the one-hot student, max best-worst gap) treat the
reference accuracy as exact: floor = reference accuracy - max drop, and only the candidate's
interval decides. Both models are scored on the same test samples, so most of their sampling
noise is shared; an unpaired two-sample interval would overstate the uncertainty of the drop,
and a paired one needs per-sample predictions that reports do not keep.
"""

from __future__ import annotations

from typing import Sequence

from compression.evaluation.report import EvalReport, GroupMetrics
from compression.guardrails.rules import (FAIL, accuracy_verdict, absolute_floor, pct,
                                          severity, worst)
from compression.guardrails.verdict import Check, GroupResult, StageVerdict
from compression.spec import GuardrailSpec

__all__ = ["judge", "WHOLE_MODEL_RULES"]

WHOLE_MODEL_RULES = ("min_worst_group_accuracy", "max_group_gap")
# rule -> {subgroup: (floor, reference accuracy)}
Floors = dict[str, dict[str, tuple[float | None, float | None]]]


def judge(report: EvalReport, policy: GuardrailSpec, stage: str, *,
          teacher: EvalReport | None = None, one_hot: EvalReport | None = None) -> StageVerdict:
    """Apply every active rule of ``policy`` to every subgroup of ``report``.

    teacher / one_hot: reports on the same test split, required when the policy sets
        max_drop_vs_teacher / max_drop_vs_one_hot (a missing one is a caller bug:
        ``ValueError``).
    """
    floors = _rule_floors(report, policy, teacher, one_hot)
    checks: list[Check] = []
    for rule, by_group in floors.items():
        rule_checks = [_check(rule, report.group(g), floor, ref, policy)
                       for g, (floor, ref) in by_group.items()]
        if rule in WHOLE_MODEL_RULES and rule_checks:
            rule_checks = [_decisive(rule, rule_checks, len(by_group))]
        checks += rule_checks
    groups = tuple(_group_result(m, [f[m.name] for f in floors.values() if m.name in f],
                                 policy.min_samples) for m in report.groups)
    return StageVerdict(stage, tuple(checks), groups, policy.block_on_insufficient_evidence)


def _rule_floors(report: EvalReport, policy: GuardrailSpec, teacher: EvalReport | None,
                 one_hot: EvalReport | None) -> Floors:
    names = report.group_names
    floors: Floors = {}
    absolute = {g: (absolute_floor(policy, g), None) for g in names}
    if any(f > 0 for f, _ in absolute.values()):
        floors["min_accuracy"] = {g: v for g, v in absolute.items() if v[0] > 0}
    for rule, max_drop, ref in (("max_drop_vs_teacher", policy.max_drop_vs_teacher, teacher),
                                ("max_drop_vs_one_hot", policy.max_drop_vs_one_hot, one_hot)):
        if max_drop is not None:
            floors[rule] = _drop_floors(report, _checked_reference(rule, report, ref), max_drop)
    if policy.min_worst_group_accuracy is not None:
        floors["min_worst_group_accuracy"] = {g: (policy.min_worst_group_accuracy, None)
                                              for g in names}
    if policy.max_group_gap is not None:
        best = _best_accuracy(report, policy.min_samples)
        floors["max_group_gap"] = {g: (None if best is None else best - policy.max_group_gap,
                                       best) for g in names}
    return floors


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
    return ref


def _drop_floors(report: EvalReport, ref: EvalReport,
                 max_drop: float) -> dict[str, tuple[float | None, float | None]]:
    """floor = reference accuracy - max_drop per subgroup; None where the subgroup is empty."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for g, r in zip(report.groups, ref.groups):
        out[g.name] = (None, None) if r.accuracy is None else (r.accuracy - max_drop, r.accuracy)
    return out


def _best_accuracy(report: EvalReport, min_samples: int) -> float | None:
    """Best subgroup accuracy among those with min_samples samples (else any non-empty one).

    A tiny subgroup that happens to score 100% would otherwise raise every other floor.
    """
    solid = [g.accuracy for g in report.groups if g.accuracy is not None and g.n >= min_samples]
    scored = solid or [g.accuracy for g in report.groups if g.accuracy is not None]
    return max(scored, default=None)


def _check(rule: str, m: GroupMetrics, floor: float | None, ref: float | None,
           policy: GuardrailSpec) -> Check:
    verdict, reason = accuracy_verdict(m, floor, policy.min_samples)
    return Check(rule=rule, subgroup=m.name, value=m.accuracy, floor=floor,
                 ci=(m.ci_low, m.ci_high), n=m.n, verdict=verdict, reference=ref,
                 message=f"{rule} on {m.name!r}: {_floor_origin(rule, floor, ref, policy)}"
                         f"{reason}")


def _floor_origin(rule: str, floor: float | None, ref: float | None,
                  policy: GuardrailSpec) -> str:
    """How a relative floor was computed, so a reader can redo the arithmetic."""
    if floor is None or ref is None:
        return ""
    source = {"max_drop_vs_teacher": ("teacher", policy.max_drop_vs_teacher),
              "max_drop_vs_one_hot": ("one-hot student", policy.max_drop_vs_one_hot),
              "max_group_gap": ("best subgroup", policy.max_group_gap)}[rule]
    return (f"floor = {source[0]} {pct(ref)} - {100 * source[1]:.1f} pp = "
            f"{pct(floor)}; ")


def _decisive(rule: str, checks: Sequence[Check], count: int) -> Check:
    """The check that decides a whole-model rule: most severe, then lowest accuracy."""
    def key(c: Check) -> tuple[int, float]:
        return severity(c.verdict), -(c.value if c.value is not None else -1.0)
    chosen = max(checks, key=key)
    failing = sum(c.verdict == FAIL for c in checks)
    tail = f" ({failing} of {count} subgroups fail it)" if failing > 1 else ""
    return Check(rule=rule, subgroup=chosen.subgroup, value=chosen.value, floor=chosen.floor,
                 ci=chosen.ci, n=chosen.n, verdict=chosen.verdict, reference=chosen.reference,
                 message=f"{chosen.message}{tail}")


def _group_result(m: GroupMetrics, floors: list[tuple[float | None, float | None]],
                  min_samples: int) -> GroupResult:
    known = [f for f, _ in floors if f is not None]
    floor = max(known, default=None)
    verdict = None
    if floors:
        # One verdict per rule floor, not just at the highest: identical by monotonicity
        # except that it also covers a floor that could not be computed (empty subgroup).
        verdict = worst(accuracy_verdict(m, f, min_samples)[0] for f, _ in floors)
    return GroupResult(name=m.name, n=m.n, accuracy=m.accuracy, ci=(m.ci_low, m.ci_high),
                       floor=floor, verdict=verdict)
