"""The text a person reads for a finished job: tables per stage and the guardrail outcome."""

from __future__ import annotations

from typing import Any

from compression.evaluation import EvalReport

__all__ = ["format_report"]

STAGE_ORDER = ("teacher", "one_hot", "student", "onnx", "int8", "tensorrt")


def format_report(report: dict[str, Any]) -> str:
    """``report``: a job's report.json as a dict."""
    evaluations = report.get("evaluations", {})
    names = sorted(evaluations, key=lambda n: (STAGE_ORDER.index(n) if n in STAGE_ORDER
                                               else len(STAGE_ORDER), n))
    parts = [f"{name}\n{EvalReport.from_dict(evaluations[name]).format_table()}"
             for name in names]
    for stage, export in (report.get("exports") or {}).items():
        if export.get("status") != "BUILT":
            parts.append(f"{stage}: {export.get('status')} ({export.get('reason', '')})")
    guardrails = report.get("guardrails") or {}
    if guardrails:
        parts.append(f"guardrails: {guardrails.get('summary', '')}")
    shipped = report.get("shipped")
    parts.append(f"status: {report.get('status')}"
                 + (f" (ships: {shipped})" if shipped else " (nothing ships)"))
    return "\n\n".join(parts)
