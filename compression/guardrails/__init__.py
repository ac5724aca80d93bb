"""Guardrails: per-subgroup accuracy floors checked on the student and every exported artifact.

``check_policy`` and ``preflight_notes`` run before training; ``judge`` turns one stage's
``EvalReport`` into a ``StageVerdict`` of PASS / FAIL / INSUFFICIENT_EVIDENCE checks: each
rule on each subgroup is a test (``evidence``), paired where two models answered the same
examples, with the stage's false FAILs held to 1 - confidence (``multiplicity``); ``rules``
turns the tests into verdicts.
"""

from compression.guardrails.judge import WHOLE_MODEL_RULES, judge
from compression.guardrails.multiplicity import METHODS as MULTIPLICITY_METHODS
from compression.guardrails.policy import (check_policy, describe_policy, detectable_drops,
                                           preflight_notes)
from compression.guardrails.rules import FAIL, INSUFFICIENT_EVIDENCE, PASS, VERDICTS
from compression.guardrails.verdict import (Check, GroupResult, StageVerdict,
                                            first_failing_stage, summarize)

__all__ = [
    "PASS", "FAIL", "INSUFFICIENT_EVIDENCE", "VERDICTS", "WHOLE_MODEL_RULES",
    "MULTIPLICITY_METHODS", "Check", "GroupResult", "StageVerdict", "judge", "check_policy",
    "describe_policy", "preflight_notes", "detectable_drops", "first_failing_stage", "summarize",
]
