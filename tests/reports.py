"""Job reports for tests: real ``EvalReport``s from per-subgroup counts, judged by the real
guardrails, gathered into a real ``JobReport`` (no hand-written report dicts)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from compression.evaluation import EvalReport, GroupMetrics, Outcomes, wilson_interval
from compression.artifacts import choose_shipped
from compression.guardrails import judge
from compression.report import DataSummary, GuardrailsReport, JobReport, SplitSummary
from compression.spec import GuardrailSpec, JobSpec, TeacherSpec

__all__ = ["eval_report", "paired_reports", "job_report", "SPEC"]

SPEC = JobSpec(name="fmnist-kd", teacher=TeacherSpec(path="teacher.pt2"))


def eval_report(name: str, **counts: tuple[int, int]) -> EvalReport:
    """``eval_report("onnx", shirt=(45, 50))``: 45 of 50 right on subgroup shirt."""
    groups = []
    for g, (c, n) in counts.items():
        low, high = wilson_interval(c, n) if n else (0.0, 1.0)
        groups.append(GroupMetrics(g, n, c, c / n if n else None, low, high))
    c, n = sum(g.correct for g in groups), sum(g.n for g in groups)
    overall = GroupMetrics("overall", n, c, c / n, *wilson_interval(c, n))
    return EvalReport(name, overall, tuple(groups), tuple(groups), None, None, 3, None, [])


def paired_reports(**groups: tuple[int, int, int, int]) -> tuple[EvalReport, EvalReport]:
    """(reference, candidate) on the same examples; per subgroup (both right, b, c, n):
    b examples only the reference gets right, c only the candidate."""
    ref_hit, cand_hit, group = [], [], []
    for i, (both, b, c, n) in enumerate(groups.values()):
        ref_hit += [True] * both + [True] * b + [False] * c + [False] * (n - both - b - c)
        cand_hit += [True] * both + [False] * b + [True] * c + [False] * (n - both - b - c)
        group += [i] * n
    out = []
    for name, hits in (("reference", ref_hit), ("candidate", cand_hit)):
        counts = {g: (sum(h for h, k in zip(hits, group) if k == i), groups[g][3])
                  for i, g in enumerate(groups)}
        hit, ids = torch.tensor(hits), torch.tensor(group)
        out.append(dataclasses.replace(eval_report(name, **counts), outcomes=Outcomes(
            hit, ids.clone(), ids, len(groups))))
    return out[0], out[1]


def job_report(stages: dict[str, EvalReport], policy: GuardrailSpec, *,
               references: dict[str, EvalReport] | None = None, ship: tuple[str, ...] = (),
               **sections: Any) -> JobReport:
    """Judge every report of ``stages`` under ``policy`` and ship the first of ``ship`` that
    passed (none: nothing ships)."""
    first = next(iter(stages.values()))
    names = list(first.group_names)
    verdicts = tuple(judge(r, policy, stage, **(sections.pop(f"refs_{stage}", {})))
                     for stage, r in stages.items())
    split = SplitSummary(first.overall.n, {g: 0 for g in names},
                         {g.name: g.n for g in first.groups})
    return JobReport(
        spec=dataclasses.replace(SPEC, guardrails=policy),
        data=DataSummary(tuple(names), tuple(names), (1, 4, 4), {"test": split}),
        evaluations={**(references or {}), **stages},
        guardrails=GuardrailsReport(policy, verdicts),
        shipped=choose_shipped(verdicts, ship), **sections)
