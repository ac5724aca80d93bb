"""Guardrail results: one ``Check`` per rule and subgroup, gathered into a ``StageVerdict``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from compression.errors import InvalidInput
from compression.guardrails.rules import FAIL, INSUFFICIENT_EVIDENCE, PASS, VERDICTS, worst

__all__ = ["Check", "GroupResult", "StageVerdict", "first_failing_stage", "summarize"]


@dataclass(frozen=True)
class Check:
    """One rule applied to one subgroup of one stage.

    value: the subgroup's accuracy (None when it has no test samples).
    floor: the accuracy the rule asks for, for readers: the floor itself, or the reference
        accuracy minus the margin (None for an empty subgroup under a relative rule).
    ci: the subgroup's 95% Wilson interval. reference: the accuracy a relative rule is
        measured from (teacher, one-hot student, student, best subgroup); None for floors.
    The test (None when the subgroup has no test samples, which is never tested):
    method: wilson_score (a floor), tango_score (a paired drop), newcombe_hybrid (a gap).
    estimate: what the rule bounds: the accuracy (floors), the drop = reference accuracy -
        this accuracy on the same examples (drop rules), or the gap to the best subgroup.
    margin: the bound: the floor, the largest drop or the largest gap allowed.
    interval: (low, high) on the estimate; the bound on the safe side is one-sided at the
        stage's confidence (PASS when it clears the margin), the one on the harm side is at
        1 - threshold (FAIL when it clears the margin).
    p_value: one-sided p-value of harm (the estimate's true value is beyond the margin).
    threshold: what p_value was compared with after the multiplicity adjustment.
    b, c: paired tests only: examples the reference got right and this model wrong, and
        the reverse, out of n.
    mde: the smallest harm these n examples could show at the threshold: a drop (reached
        when every disagreement goes against this model), a gap, or a shortfall below the
        floor; None when no harm could be shown.
    For the whole-model rules (min_worst_group_accuracy, max_group_gap) the rule is applied
    to every subgroup and the check records the one that decides its verdict.
    """

    rule: str
    subgroup: str | None
    value: float | None
    floor: float | None
    ci: tuple[float, float]
    n: int
    verdict: str
    message: str
    reference: float | None = None
    method: str | None = None
    estimate: float | None = None
    margin: float | None = None
    interval: tuple[float, float] | None = None
    p_value: float | None = None
    threshold: float | None = None
    b: int | None = None
    c: int | None = None
    mde: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "subgroup": self.subgroup, "value": self.value,
                "floor": self.floor, "ci": list(self.ci), "n": self.n, "verdict": self.verdict,
                "message": self.message, "reference": self.reference, "method": self.method,
                "estimate": self.estimate, "margin": self.margin,
                "interval": None if self.interval is None else list(self.interval),
                "p_value": self.p_value, "threshold": self.threshold, "b": self.b, "c": self.c,
                "mde": self.mde}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Check:
        """Reports written before the test fields existed read back with them None."""
        interval = d.get("interval")
        return cls(rule=str(d["rule"]), subgroup=d["subgroup"], value=_opt(d["value"]),
                   floor=_opt(d["floor"]), ci=(float(d["ci"][0]), float(d["ci"][1])),
                   n=int(d["n"]), verdict=_verdict(d["verdict"]), message=str(d["message"]),
                   reference=_opt(d.get("reference")), method=d.get("method"),
                   estimate=_opt(d.get("estimate")), margin=_opt(d.get("margin")),
                   interval=None if interval is None else (float(interval[0]),
                                                           float(interval[1])),
                   p_value=_opt(d.get("p_value")), threshold=_opt(d.get("threshold")),
                   b=_opt_int(d.get("b")), c=_opt_int(d.get("c")), mde=_opt(d.get("mde")))


@dataclass(frozen=True)
class GroupResult:
    """One subgroup of one stage against the highest floor any rule sets for it.

    floor and verdict are None when no rule judges the subgroup. The verdict under the
    highest floor is the worst verdict of the subgroup's checks, so this is the row a
    reader wants: accuracy, interval, the floor that binds, and the outcome.
    keys: the subgroup keys that define it (several for an intersection); empty when the
    report did not say. JSON carries ``keys`` only when non-empty.
    """

    name: str
    n: int
    accuracy: float | None
    ci: tuple[float, float]
    floor: float | None
    verdict: str | None
    keys: tuple[str, ...] = ()

    @property
    def is_intersection(self) -> bool:
        return len(self.keys) > 1

    def to_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "n": self.n, "accuracy": self.accuracy, "ci": list(self.ci),
               "floor": self.floor, "verdict": self.verdict}
        return {**out, "keys": list(self.keys)} if self.keys else out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GroupResult:
        verdict = d["verdict"]
        return cls(name=str(d["name"]), n=int(d["n"]), accuracy=_opt(d["accuracy"]),
                   ci=(float(d["ci"][0]), float(d["ci"][1])), floor=_opt(d["floor"]),
                   verdict=None if verdict is None else _verdict(verdict),
                   keys=_strings(d.get("keys", ()), "keys"))


@dataclass(frozen=True)
class StageVerdict:
    """Every guardrail check of one stage (student, onnx, int8, tensorrt...).

    confidence: the one-sided level of every PASS; the chance of any false FAIL among the
        stage's checks is at most 1 - confidence. multiplicity: how the FAIL thresholds were
        adjusted (holm, bonferroni, none). family_size: how many checks were tested
        together (every rule on every subgroup with test samples).
    advisory_subgroups: intersections with fewer than min_samples test examples; they are
        judged, and a FAIL on one blocks, but their INSUFFICIENT_EVIDENCE does not.
    """

    stage: str
    checks: tuple[Check, ...]
    groups: tuple[GroupResult, ...]
    block_on_insufficient_evidence: bool = True
    confidence: float = 0.95
    multiplicity: str = "holm"
    family_size: int = 0
    advisory_subgroups: tuple[str, ...] = ()

    @property
    def verdict(self) -> str:
        """The most severe verdict of the checks; PASS when no rule is active."""
        return worst(c.verdict for c in self.checks)

    @property
    def passed(self) -> bool:
        """No check blocks: no FAIL, and no INSUFFICIENT_EVIDENCE unless that is set not to
        block or it is on an advisory subgroup."""
        return not self.failing_checks

    def blocks(self, check: Check) -> bool:
        """Whether ``check`` keeps this stage from shipping."""
        return self._blocks(check.verdict, check.subgroup)

    def _blocks(self, verdict: str | None, subgroup: str | None) -> bool:
        return verdict == FAIL or (verdict == INSUFFICIENT_EVIDENCE
                                   and self.block_on_insufficient_evidence
                                   and subgroup not in self.advisory_subgroups)

    @property
    def failing_subgroups(self) -> tuple[str, ...]:
        """Subgroups whose verdict stops this stage from passing, in group order."""
        return tuple(g.name for g in self.groups if self._blocks(g.verdict, g.name))

    @property
    def failing_checks(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if self.blocks(c))

    def to_dict(self) -> dict[str, Any]:
        out = {"stage": self.stage, "passed": self.passed, "verdict": self.verdict,
               "block_on_insufficient_evidence": self.block_on_insufficient_evidence,
               "confidence": self.confidence, "multiplicity": self.multiplicity,
               "family_size": self.family_size,
               "failing_subgroups": list(self.failing_subgroups),
               "checks": [c.to_dict() for c in self.checks],
               "groups": [g.to_dict() for g in self.groups]}
        if self.advisory_subgroups:
            out["advisory_subgroups"] = list(self.advisory_subgroups)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageVerdict:
        """Rebuild from ``to_dict`` output; ``passed`` and the summaries are recomputed."""
        try:
            return cls(stage=str(data["stage"]),
                       checks=tuple(Check.from_dict(c) for c in data["checks"]),
                       groups=tuple(GroupResult.from_dict(g) for g in data["groups"]),
                       block_on_insufficient_evidence=bool(data["block_on_insufficient_evidence"]),
                       confidence=float(data.get("confidence", 0.95)),
                       multiplicity=str(data.get("multiplicity", "holm")),
                       family_size=int(data.get("family_size", 0)),
                       advisory_subgroups=_strings(data.get("advisory_subgroups", ()),
                                                   "advisory_subgroups"))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidInput(f"not a valid guardrail verdict ({type(exc).__name__}: {exc}); "
                               "use a report.json written by this service") from exc


def first_failing_stage(verdicts: Sequence[StageVerdict]) -> str | None:
    """The stage of the first verdict that did not pass, in the order given; None if all did."""
    return next((v.stage for v in verdicts if not v.passed), None)


def summarize(verdicts: Sequence[StageVerdict]) -> str:
    """One line per stage that did not pass: its FAIL and INSUFFICIENT_EVIDENCE subgroups,
    each with the rules behind it. A stage that passed only because insufficient evidence
    does not block is listed too, so that it is never silent.
    """
    lines = []
    for v in verdicts:
        if v.verdict == PASS:
            continue
        status = ("did not pass" if not v.passed
                  else "passed (insufficient evidence not blocking)"
                  if not v.block_on_insufficient_evidence
                  else "passed (insufficient evidence only on intersections under min_samples)")
        parts = []
        for level in (FAIL, INSUFFICIENT_EVIDENCE):
            rules: dict[str, list[str]] = {}
            for c in v.checks:
                if c.verdict == level:
                    rules.setdefault(_subgroup(c), []).append(c.rule)
            if rules:
                parts.append(f"{level} on " + ", ".join(f"{g} ({', '.join(r)})"
                                                        for g, r in rules.items()))
        lines.append(f"stage {v.stage!r} {status}: {'; '.join(parts)}")
    if not lines:
        return ("every stage passed its guardrails" if verdicts
                else "no stage was judged against the guardrails")
    return "\n".join(lines)


def _subgroup(check: Check) -> str:
    return "no subgroup" if check.subgroup is None else repr(check.subgroup)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings, not {value!r:.60}")
    return tuple(value)


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _verdict(value: Any) -> str:
    if value not in VERDICTS:
        raise ValueError(f"verdict {value!r} is not one of {', '.join(VERDICTS)}")
    return str(value)
