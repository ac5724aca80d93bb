"""The model card: what was built, how every subgroup fared, what ships and why, its limits."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from compression.evaluation.report import EvalReport
from compression.guardrails import INSUFFICIENT_EVIDENCE, StageVerdict, describe_policy
from compression.guardrails.rules import pct
from compression.spec import GuardrailSpec

__all__ = ["render_model_card"]


def render_model_card(report: Mapping[str, Any], stage_reports: Mapping[str, EvalReport],
                      verdicts: Sequence[StageVerdict], policy: GuardrailSpec, *,
                      shipped: str | None, deployable: bool, shipped_file: str | None,
                      triton_dir: str | None, reason: str | None = None) -> str:
    """Markdown text of the card. ``report`` is the job report (spec, data...) as plain data."""
    spec = report.get("spec") or {}
    sections = [
        f"# Model card: {spec.get('name', 'model')}",
        _status(verdicts, shipped, deployable, shipped_file, triton_dir, reason),
        "## Model\n\n" + "\n".join(_model_lines(report)),
        "## Overall accuracy\n\n" + _overall_table(stage_reports, verdicts),
        "## Guardrail policy\n\n" + "\n".join(f"- {line}" for line in describe_policy(policy))
        + "\n" + _METHOD,
        "## Per-subgroup results\n\n" + _group_tables(stage_reports, verdicts),
        "## Intended use and limits\n\n" + "\n".join(f"- {line}" for line in _limits(report)),
    ]
    return "\n\n".join(sections) + "\n"


_METHOD = (
    "\nA check PASSes when the subgroup's 95% Wilson interval lies at or above its floor; it "
    "FAILs when the measured accuracy is below the floor (with fewer than min_samples test "
    "samples: when the whole interval is); otherwise it is INSUFFICIENT_EVIDENCE. Floors "
    "relative to the teacher, the one-hot student or the best subgroup treat that reference "
    "accuracy as exact (both are measured on the same test samples). The floor shown per "
    "subgroup is the highest any rule sets for it.")


def _status(verdicts: Sequence[StageVerdict], shipped: str | None, deployable: bool,
            shipped_file: str | None, triton_dir: str | None, reason: str | None) -> str:
    if deployable:
        v = next(v for v in verdicts if v.stage == shipped)
        why = reason or f"it passed all {len(v.checks)} guardrail checks on the test split"
        note = ""
        if v.verdict == INSUFFICIENT_EVIDENCE:
            note = (" Some checks had insufficient evidence, which this policy does not block "
                    f"on: {', '.join(map(repr, _insufficient(v)))}.")
        serve = (f"It is packaged for Triton Inference Server in `{triton_dir}/`." if triton_dir
                 else "No Triton model repository was written: Triton serves ONNX models and "
                      "TensorRT engines, so export one (export.onnx: true) to get it.")
        return f"**Status: SHIPPED.** `{shipped}` (`{shipped_file}`) ships: {why}.{note} {serve}"
    if shipped is not None:
        why = f"`{shipped}` was chosen but did not pass its guardrails"
    elif verdicts:
        why = "no artifact passed every guardrail"
    else:
        why = "no artifact was judged against the guardrails"
    text = (f"**Status: REJECTED.** Nothing ships: {why}, so no Triton model repository was "
            "written.")
    blocking = [v for v in verdicts if not v.passed]
    if blocking:
        text += "\n\n" + "\n".join(f"- {v.stage}: " + ", ".join(v.failing_subgroups)
                                    for v in blocking)
        text += "\n\n### Blocking checks\n\n" + "\n".join(
            f"- {v.stage}: {c.message}" for v in blocking for c in v.failing_checks)
    return text


def _insufficient(v: StageVerdict) -> list[str]:
    return [g.name for g in v.groups if g.verdict == INSUFFICIENT_EVIDENCE]


def _model_lines(report: Mapping[str, Any]) -> list[str]:
    spec, data = report.get("spec") or {}, report.get("data") or {}
    student, teacher = spec.get("student") or {}, spec.get("teacher") or {}
    mitigation = spec.get("mitigation") or {}
    params = report.get("student_parameters")
    lines = [f"- Student: `{student.get('arch', '?')}` (width {student.get('width', '?')}"
             + (f", {params:,} parameters)" if isinstance(params, int) else ")")]
    if teacher.get("path"):
        lines.append(f"- Teacher: `{teacher['path']}`")
    if mitigation:
        lines.append(f"- Objective: `{mitigation.get('name')}` (alpha {mitigation.get('alpha')}, "
                     f"temperature {mitigation.get('temperature')})")
    shape = data.get("input_shape")
    if shape:
        lines.append(f"- Input: float32 [batch, {', '.join(map(str, shape))}], pixel values "
                     "scaled to [0, 1] (uint8 / 255); any normalisation is inside the model")
    classes = data.get("class_names") or []
    if classes:
        lines.append(f"- Output: logits [batch, {len(classes)}] over {', '.join(classes)}")
    source = (spec.get("data") or {}).get("source")
    test = ((data.get("splits") or {}).get("test") or {}).get("size")
    if source or test:
        lines.append(f"- Data: {source or '?'}; test split of {test if test is not None else '?'}"
                     f" samples in {len(data.get('group_names') or [])} subgroups")
    return lines


def _overall_table(stage_reports: Mapping[str, EvalReport],
                   verdicts: Sequence[StageVerdict]) -> str:
    judged = {v.stage: v for v in verdicts}
    rows = ["| stage | accuracy | 95% CI | guardrails |", "|---|---:|---:|---|"]
    for name in [*(s for s in stage_reports if s not in judged), *judged]:
        r = stage_reports.get(name)
        acc = "-" if r is None else pct(r.overall.accuracy)
        ci = "-" if r is None else f"{pct(r.overall.ci_low)} - {pct(r.overall.ci_high)}"
        v = judged.get(name)
        status = "reference" if v is None else ("passed" if v.passed else "did not pass")
        rows.append(f"| {_cell(name)} | {acc} | {ci} | {status} |")
    return "\n".join(rows)


def _group_tables(stage_reports: Mapping[str, EvalReport],
                  verdicts: Sequence[StageVerdict]) -> str:
    parts = []
    for v in verdicts:
        rows = ["| subgroup | n | accuracy | 95% CI | floor | verdict |",
                "|---|---:|---:|---:|---:|---|"]
        rows += [f"| {_cell(g.name)} | {g.n} | {pct(g.accuracy)} | {_ci(g.n, g.ci)} | "
                 f"{pct(g.floor)} | {g.verdict or 'not judged'} |" for g in v.groups]
        parts.append(f"### {v.stage}: {'passed' if v.passed else 'did not pass'} "
                     f"({v.verdict})\n\n" + "\n".join(rows))
    judged = {v.stage for v in verdicts}
    for name, r in stage_reports.items():
        if name in judged:
            continue
        rows = ["| subgroup | n | accuracy | 95% CI |", "|---|---:|---:|---:|"]
        rows += [f"| {_cell(g.name)} | {g.n} | {pct(g.accuracy)} | "
                 f"{_ci(g.n, (g.ci_low, g.ci_high))} |" for g in r.groups]
        parts.append(f"### {name} (reference, not judged)\n\n" + "\n".join(rows))
    return "\n\n".join(parts) if parts else "No stage was evaluated."


def _limits(report: Mapping[str, Any]) -> list[str]:
    subgroups = ((report.get("spec") or {}).get("data") or {}).get("subgroups") or {}
    by = subgroups.get("by", "class")
    return [
        "Intended use: classifying images like the training data (same sensor, framing, size "
        "and classes). Inputs outside those classes still get one of them.",
        f"The guardrails cover the subgroups defined by `{by}` on this test split only; "
        "other groupings, shifted data and individual predictions are not covered.",
        "Accuracies are estimates from a finite test split; small subgroups have wide "
        "intervals, shown above.",
        "Not evaluated: calibration of the scores, robustness to corrupted or adversarial "
        "inputs, latency on the target server.",
    ]


def _ci(n: int, ci: tuple[float, float]) -> str:
    return "-" if n == 0 else f"{pct(ci[0])} - {pct(ci[1])}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|")
