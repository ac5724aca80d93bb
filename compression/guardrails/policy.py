"""Policy checks that can run before any training, and the policy in words for reports."""

from __future__ import annotations

import math
from typing import Sequence

from compression.evaluation.stats import wilson_interval
from compression.guardrails.rules import TOLERANCE, absolute_floor, judging_rules, pct
from compression.spec import GuardrailSpec

__all__ = ["check_policy", "describe_policy"]

_Z = 1.96  # the 95% intervals every verdict uses


def check_policy(spec: GuardrailSpec, group_names: Sequence[str],
                 test_group_counts: Sequence[int]) -> list[str]:
    """Problems that would make the guardrails meaningless or certain to block; [] if none.

    group_names / test_group_counts: the subgroups and their test-split sizes, in group order.
    Finds: overrides naming unknown subgroups; judged subgroups with no test samples; and,
    when insufficient evidence blocks, judged subgroups below ``min_samples`` or too small
    for their absolute floor ever to be shown (even all-correct, the 95% lower bound
    n / (n + 1.96^2) stays under it). Each of those would reject the job after training.
    """
    if len(group_names) != len(test_group_counts):
        raise ValueError(f"{len(group_names)} group names but {len(test_group_counts)} counts")
    problems = []
    unknown = [g for g in spec.min_accuracy_by_group if g not in set(group_names)]
    if unknown:
        problems.append(f"guardrails.min_accuracy_by_group names unknown subgroup(s) "
                        f"{', '.join(map(repr, unknown))}; the subgroups are: "
                        f"{', '.join(group_names)}")
    for name, n in zip(group_names, test_group_counts):
        rules = judging_rules(spec, name)
        if rules:
            problems += _group_problems(spec, name, int(n), rules)
    return problems


def _group_problems(spec: GuardrailSpec, name: str, n: int, rules: list[str]) -> list[str]:
    judged_by = ", ".join(rules)
    if n == 0:
        return [f"subgroup {name!r} has no test samples but is judged by {judged_by}; add test "
                "samples of it (check data.test_path and data.max_test) or remove those rules"]
    if not spec.block_on_insufficient_evidence:
        return []
    if n < spec.min_samples:
        return [f"subgroup {name!r} has {n} test samples, fewer than guardrails.min_samples "
                f"({spec.min_samples}), so {judged_by} can only give INSUFFICIENT_EVIDENCE and "
                "block the job; add test samples, lower min_samples, or set "
                "block_on_insufficient_evidence: false"]
    floor = max(absolute_floor(spec, name), spec.min_worst_group_accuracy or 0.0)
    best_low = wilson_interval(n, n, _Z)[0]
    if floor <= best_low + TOLERANCE:
        return []
    if floor >= 1:
        need = "use a floor below 100%: no finite sample shows an accuracy of 100%"
    else:
        need = (f"use at least {math.ceil(floor * _Z ** 2 / (1 - floor))} test samples of it "
                "or a lower floor")
    return [f"subgroup {name!r} has {n} test samples: even {n}/{n} correct gives a 95% lower "
            f"bound of {pct(best_low)}, under its floor {pct(floor)}, so it can never PASS and "
            f"would block the job; {need}, or set block_on_insufficient_evidence: false"]


def describe_policy(spec: GuardrailSpec) -> list[str]:
    """The active rules in words, one line each (for model cards and terminals)."""
    lines = []
    if spec.min_accuracy > 0:
        lines.append(f"min_accuracy: every subgroup at least {pct(spec.min_accuracy)}")
    lines += [f"min_accuracy_by_group.{g}: at least {pct(v)}"
              for g, v in spec.min_accuracy_by_group.items() if v is not None]
    for name, words in (("max_drop_vs_teacher", "below the teacher's"),
                        ("max_drop_vs_one_hot", "below the one-hot student's")):
        value = getattr(spec, name)
        if value is not None:
            lines.append(f"{name}: no subgroup more than {100 * value:.1f} pp {words}")
    if spec.min_worst_group_accuracy is not None:
        lines.append(f"min_worst_group_accuracy: the worst subgroup at least "
                     f"{pct(spec.min_worst_group_accuracy)}")
    if spec.max_group_gap is not None:
        lines.append(f"max_group_gap: no subgroup more than {100 * spec.max_group_gap:.1f} pp "
                     "below the best one")
    if not lines:
        return ["no guardrail rule is set: nothing is judged"]
    blocks = "blocks" if spec.block_on_insufficient_evidence else "does not block"
    lines.append(f"min_samples: {spec.min_samples}; insufficient evidence {blocks} shipping")
    return lines
