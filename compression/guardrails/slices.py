"""Discovered slices: harm on groups nobody named, found on holdout and judged on test.

``compression.evaluation.slices`` finds candidate slices on the holdout split: clusters of
a model's penultimate features where the compared model looks worse than its reference.
Here each candidate, as a region of the representation, is applied to the test split and
judged with the paired score test of the named subgroups (``evidence.Paired``, margin
``max_drop``): every candidate with at least ``min_size`` test examples counts in one
family, adjusted by the policy's multiplicity method, so the chance of any false FAIL
among the slices is at most 1 - confidence however many clusters were searched (the
search saw only holdout). Under the ``discovered_slices`` rule a FAIL blocks shipping;
without it the slices are judged with the rule's defaults and only reported.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from compression.evaluation.slices import Candidate, assign, fit_space, kmeans, rank_clusters
from compression.evaluation.stats import wilson_interval
from compression.guardrails.evidence import Paired
from compression.guardrails.judge import decide_family
from compression.guardrails.rules import FAIL, alpha_of, explain, pct, pp
from compression.guardrails.verdict import Check
from compression.spec import GuardrailSpec, SliceDiscoverySpec, SliceRuleSpec

__all__ = ["RULE", "SliceExamples", "SliceAccuracy", "DiscoveredSlice", "SliceComparison",
           "SliceDiscovery", "discover_slices"]

RULE = "discovered_slices"


@dataclass(frozen=True)
class SliceExamples:
    """One split as discovery sees it. features: [N, D] penultimate features; ref_hit,
    cand_hit: [N] bool, whether the reference and the compared model were right; label: [N]
    class ids; meta: [N] metadata ids (attribute cells) or None."""

    features: Tensor
    ref_hit: Tensor
    cand_hit: Tensor
    label: Tensor
    meta: Tensor | None = None

    def __post_init__(self) -> None:
        n = self.features.shape[0]
        sizes = [t.shape[0] for t in (self.ref_hit, self.cand_hit, self.label)
                 + (() if self.meta is None else (self.meta,))]
        if self.features.dim() != 2 or any(s != n for s in sizes):
            raise ValueError(f"features [N, D] and [N] outcomes expected; got "
                             f"{tuple(self.features.shape)} and sizes {sizes}")


@dataclass(frozen=True)
class SliceAccuracy:
    """One model on one slice: correct of n, with the 95% Wilson interval."""

    correct: int
    n: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.n)

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "accuracy": self.accuracy, "ci": list(self.ci)}


@dataclass(frozen=True)
class DiscoveredSlice:
    """One candidate judged on test. cluster: its k-means cluster; holdout_n and
    holdout_drop: the evidence that found it; n: its test examples, members their indices
    in the test split; classes: how many of them each class has."""

    name: str
    cluster: int
    holdout_n: int
    holdout_drop: float
    classes: dict[str, int]
    candidate: SliceAccuracy
    reference: SliceAccuracy
    check: Check
    members: tuple[int, ...]

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def harmed(self) -> bool:
        return self.check.verdict == FAIL

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "n": self.n, "harmed": self.harmed,
                "verdict": self.check.verdict, "cluster": self.cluster,
                "holdout_n": self.holdout_n, "holdout_drop": self.holdout_drop,
                "classes": dict(self.classes), "candidate": self.candidate.to_dict(),
                "reference": self.reference.to_dict(), "check": self.check.to_dict(),
                "members": list(self.members)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoveredSlice:
        members = tuple(int(i) for i in d["members"])
        return cls(str(d["name"]), int(d["cluster"]), int(d["holdout_n"]),
                   float(d["holdout_drop"]), {str(k): int(v) for k, v in d["classes"].items()},
                   SliceAccuracy(int(d["candidate"]["correct"]), len(members)),
                   SliceAccuracy(int(d["reference"]["correct"]), len(members)),
                   Check.from_dict(d["check"]), members)


@dataclass(frozen=True)
class SliceComparison:
    """Discovery for one compared model (``stage``) against one ``reference``.

    representation: whose penultimate features were clustered. blocking: the
    ``discovered_slices`` rule is set, so a FAIL here blocks ``stage``. family_size: the
    candidates judged together; unconfirmed: candidates with fewer than min_size test
    examples, not judged. slices: the judged candidates, in holdout rank order."""

    stage: str
    reference: str
    representation: str
    clusters: int
    components: int
    max_drop: float
    min_size: int
    blocking: bool
    holdout_n: int
    test_n: int
    family_size: int
    unconfirmed: int
    slices: tuple[DiscoveredSlice, ...]

    @property
    def harmed(self) -> tuple[DiscoveredSlice, ...]:
        return tuple(s for s in self.slices if s.harmed)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["slices"] = [s.to_dict() for s in self.slices]
        out["harmed"] = [s.name for s in self.harmed]
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SliceComparison:
        plain = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name != "slices"}
        return cls(**plain, slices=tuple(DiscoveredSlice.from_dict(s) for s in d["slices"]))


@dataclass(frozen=True)
class SliceDiscovery:
    """The ``discovered_slices`` section of report.json: one comparison per compared model;
    grid: the bundle's image of example members of the harmed slices (None: not drawn)."""

    comparisons: tuple[SliceComparison, ...]
    grid: str | None = None

    @property
    def harmed(self) -> tuple[tuple[str, DiscoveredSlice], ...]:
        return tuple((c.stage, s) for c in self.comparisons for s in c.harmed)

    def to_dict(self) -> dict[str, Any]:
        return {"comparisons": [c.to_dict() for c in self.comparisons],
                "harmed": len(self.harmed), "grid": self.grid}

    @classmethod
    def from_dict(cls, d: Any) -> SliceDiscovery:
        try:
            grid = d.get("grid")
            return cls(tuple(SliceComparison.from_dict(c) for c in d["comparisons"]),
                       None if grid is None else str(grid))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"not a discovered_slices section ({type(exc).__name__}: "
                             f"{exc})") from exc


def discover_slices(holdout: SliceExamples, test: SliceExamples, *, stage: str,
                    reference: str, representation: str, settings: SliceDiscoverySpec,
                    policy: GuardrailSpec, class_names: Sequence[str], num_meta: int = 0,
                    seed: int = 0) -> SliceComparison:
    """Find candidate slices on ``holdout`` and judge them on ``test``.

    num_meta: how many metadata ids there are (0: meta is ignored). The rule's max_drop and
    min_size come from ``policy.discovered_slices``, or its defaults when it is not set.
    """
    rule = policy.discovered_slices or SliceRuleSpec()
    meta_h, meta_t = (holdout.meta, test.meta) if num_meta else (None, None)
    space = fit_space(holdout.features, settings.components, meta_h, num_meta)
    points = space.embed(holdout.features, meta_h)
    centres = kmeans(points, settings.clusters, seed)
    found = rank_clusters(assign(points, centres), holdout.ref_hit, holdout.cand_hit,
                          centres.shape[0], settings.max_slices)
    regions = assign(space.embed(test.features, meta_t), centres)
    members = [torch.nonzero(regions == cand.cluster).flatten() for cand in found]
    confirmed = [(i, cand, m) for i, (cand, m) in enumerate(zip(found, members))
                 if m.numel() >= rule.min_size]
    slices = _judged(confirmed, test, rule, policy, class_names)
    return SliceComparison(
        stage=stage, reference=reference, representation=representation,
        clusters=int(centres.shape[0]), components=int(space.basis.shape[1]),
        max_drop=rule.max_drop, min_size=rule.min_size,
        blocking=policy.discovered_slices is not None, holdout_n=len(holdout.label),
        test_n=len(test.label), family_size=len(confirmed),
        unconfirmed=len(found) - len(confirmed), slices=slices)


def _judged(confirmed: list[tuple[int, Candidate, Tensor]], test: SliceExamples,
            rule: SliceRuleSpec, policy: GuardrailSpec,
            class_names: Sequence[str]) -> tuple[DiscoveredSlice, ...]:
    """Every confirmed candidate tested on its test members, as one family."""
    evidence = []
    for _, _, m in confirmed:
        ref, cand = test.ref_hit[m], test.cand_hit[m]
        evidence.append(Paired(int((ref & ~cand).sum()), int((~ref & cand).sum()),
                               int(m.numel()), rule.max_drop))
    family = dataclasses.replace(policy, min_samples=rule.min_size)
    decided = decide_family(evidence, family) if evidence else []
    out = []
    for (rank, cand, m), ev, (verdict, threshold) in zip(confirmed, evidence, decided):
        name = f"slice-{rank + 1}"
        cand_acc = SliceAccuracy(int(test.cand_hit[m].sum()), ev.n)
        ref_acc = SliceAccuracy(int(test.ref_hit[m].sum()), ev.n)
        classes = torch.bincount(test.label[m], minlength=len(class_names)).tolist()
        out.append(DiscoveredSlice(
            name, cand.cluster, cand.n, round(cand.drop, 12),
            {class_names[k]: v for k, v in enumerate(classes) if v},
            cand_acc, ref_acc, _check(name, ev, verdict, threshold, cand_acc, ref_acc, family),
            tuple(m.tolist())))
    return tuple(out)


def _check(name: str, ev: Paired, verdict: str, threshold: float, cand: SliceAccuracy,
           ref: SliceAccuracy, policy: GuardrailSpec) -> Check:
    interval = ev.bounds(alpha_of(policy), threshold)
    why = explain(ev, verdict, interval, threshold, policy.confidence, policy.min_samples)
    measured = (f"{pct(cand.accuracy)} ({cand.correct}/{ev.n}) vs the reference's "
                f"{pct(ref.accuracy)}: drop {pp(ev.estimate)}, b={ev.b} c={ev.c}, allowed "
                f"{pp(ev.margin)}")
    mde = ev.mde(threshold)
    return Check(rule=RULE, subgroup=name, value=cand.accuracy,
                 floor=max(0.0, ref.accuracy - ev.margin), ci=cand.ci, n=ev.n,
                 verdict=verdict, message=f"{RULE} on {name!r}: {measured}; {why}",
                 reference=ref.accuracy, method=ev.method, estimate=ev.estimate,
                 margin=ev.margin, interval=interval, p_value=ev.p_harm(),
                 threshold=threshold, b=ev.b, c=ev.c,
                 mde=None if mde is None else round(mde, 12))
