"""Guardrails: per-subgroup accuracy floors checked on the student and every exported artifact.

``check_policy`` runs before training; ``judge`` turns one stage's ``EvalReport`` into a
``StageVerdict`` of PASS / FAIL / INSUFFICIENT_EVIDENCE checks (see ``rules`` for the
statistics).
"""

from compression.guardrails.judge import WHOLE_MODEL_RULES, judge
from compression.guardrails.policy import check_policy, describe_policy
from compression.guardrails.rules import FAIL, INSUFFICIENT_EVIDENCE, PASS, VERDICTS
from compression.guardrails.verdict import (Check, GroupResult, StageVerdict,
                                            first_failing_stage, summarize)

__all__ = [
    "PASS", "FAIL", "INSUFFICIENT_EVIDENCE", "VERDICTS", "WHOLE_MODEL_RULES", "Check",
    "GroupResult", "StageVerdict", "judge", "check_policy", "describe_policy",
    "first_failing_stage", "summarize",
]
