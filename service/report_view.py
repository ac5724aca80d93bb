"""The text a person reads for a finished job: tables per stage, the guardrail outcome and the
reason for it, all read from the typed job report (``compression.report.JobReport``)."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from compression.guardrails import INSUFFICIENT_EVIDENCE, Check, StageVerdict
from compression.guardrails.rules import pct, pp
from compression.report import JobReport, blocks, stage_label

__all__ = ["format_report", "verdict_reason", "as_report"]

STAGE_ORDER = ("teacher", "one_hot", "student", "onnx", "int8", "tensorrt")


def as_report(report: JobReport | Mapping[str, Any]) -> JobReport:
    """``report`` typed: report.json's data is validated (``InvalidInput`` if malformed)."""
    return report if isinstance(report, JobReport) else JobReport.from_dict(report)


def format_report(report: JobReport | Mapping[str, Any]) -> str:
    """Every evaluation as a table, artifacts that were not built, each judged stage's
    verdict, and the status with its reason. ``report``: a JobReport or report.json's data."""
    report = as_report(report)
    names = sorted(report.evaluations, key=lambda n: (
        STAGE_ORDER.index(n) if n in STAGE_ORDER else len(STAGE_ORDER), n))
    parts = [f"{name}\n{report.evaluations[name].format_table()}" for name in names]
    parts += [f"{stage}: {export.status} ({export.reason})"
              for stage, export in report.exports.items() if export.status != "BUILT"]
    if report.stages:
        summary = (report.guardrails.summary if any(v.checks for v in report.stages)
                   else "no rule judged any stage")  # never "passed" for unjudged stages
        parts.append("\n".join([f"guardrails: {summary}",
                                *(f"  {_stage_line(v)}" for v in report.stages)]))
    shipped = report.shipped
    parts.append(f"status: {report.status}"
                 + (f" (ships: {shipped})" if shipped else " (nothing ships)")
                 + f"\nwhy: {verdict_reason(report)}")
    return "\n\n".join(parts)


def verdict_reason(report: JobReport | Mapping[str, Any]) -> str:
    """Why the job ended as it did, naming the deciding stage, each subgroup and rule that
    blocked it (or that did not block only because the policy lets insufficient evidence
    through) and the figures of its test."""
    report = as_report(report)
    v = report.deciding_stage
    if v is None:
        return "no stage was judged against the guardrails"
    if not report.deployable:
        checks = v.failing_checks
        return (f"stage {v.stage!r} is {stage_label(v)} and cannot ship ({_family(v)})"
                + _blocking_note(v) + ":" + _bullets(_check_reason(c) for c in checks))
    if not v.checks:
        return (f"{report.shipped!r} ships NOT JUDGED: no guardrail rule applies to it, so "
                "none of its subgroups was checked")
    lenient = [c for c in v.checks if c.verdict == INSUFFICIENT_EVIDENCE and not blocks(v, c)]
    text = f"{report.shipped!r} ships: {len(v.checks) - len(lenient)} of {len(v.checks)} " \
           f"checks PASS ({_family(v)})"
    if lenient:
        text += ("; INSUFFICIENT_EVIDENCE does not block under this policy, on:"
                 + _bullets(_check_reason(c) for c in lenient))
    notes = [e.reason for e in report.exports.values() if e.reason and e.status == "BUILT"]
    return text + _bullets(notes)


def _stage_line(v: StageVerdict) -> str:
    state = "passed" if v.passed else "blocked"
    if not v.checks:
        return f"{v.stage}: {stage_label(v)} ({state}; no rule applies)"
    return f"{v.stage}: {stage_label(v)} ({state}; {_family(v)})"


def _family(v: StageVerdict) -> str:
    return (f"{len(v.checks)} checks at {pct(v.confidence)} one-sided, FAIL thresholds by "
            f"{v.multiplicity} over {v.family_size} tests")


def _blocking_note(v: StageVerdict) -> str:
    if any(c.verdict == INSUFFICIENT_EVIDENCE for c in v.failing_checks):
        return "; insufficient evidence blocks under this policy"
    return ""


def _bullets(lines: Iterable[str]) -> str:
    return "".join(f"\n  - {line}" for line in lines)


def _check_reason(c: Check) -> str:
    """``c.message`` names the rule, the subgroup and the test's figures; the smallest harm
    the test could have shown completes an INSUFFICIENT_EVIDENCE."""
    mde = ""
    if c.verdict == INSUFFICIENT_EVIDENCE and c.method is not None:
        mde = (f" (the smallest harm it could show: {pp(c.mde)})" if c.mde is not None
               else " (it could show no harm at all)")
    return f"{c.verdict}: {c.message}{mde}"
