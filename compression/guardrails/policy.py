"""Policy checks that can run before any training, and the policy in words for reports.

What the test split can show is known before training, from its subgroup sizes alone:

- an absolute floor can never PASS when even n/n correct leaves the one-sided lower bound
  under it;
- a paired drop rule with margin d (``evidence.Paired``) can never FAIL when even a
  candidate wrong on every one of the n examples its reference got right (b = n, c = 0)
  is not shown to drop more than d at the stage's strictest FAIL threshold (Holm's first
  step, alpha / K): the rule then cannot detect any harm there. It can always PASS when
  the two models agree on every example, but it can PASS a candidate that disagrees with
  its reference at all only when even the mildest disagreement at equal accuracy (b = c = 1)
  leaves the upper bound under d.

``check_policy`` lists what would make the guardrails meaningless or certain to block;
``preflight_notes`` states, per paired rule and subgroup, the smallest drop it could show
and how much disagreement it tolerates, for the job log and the report.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Collection, Sequence

from compression.evaluation.stats import tango_interval, wilson_interval, z_for
from compression.guardrails.evidence import bisect_first, paired_mde
from compression.guardrails.rules import (DROP_RULES, TOLERANCE, absolute_floor,
                                          alpha_of, judging_rules, pct, pp)
from compression.spec import GuardrailSpec

__all__ = ["check_policy", "describe_policy", "preflight_notes", "family_size", "detectable_drops"]

_USER_DROP_RULES = ("max_drop_vs_teacher", "max_drop_vs_one_hot")  # independently trained


def check_policy(spec: GuardrailSpec, group_names: Sequence[str],
                 test_group_counts: Sequence[int], *,
                 intersections: Collection[str] = ()) -> list[str]:
    """Problems that would make the guardrails meaningless or certain to block; [] if none.

    group_names / test_group_counts: the reported subgroups and their test-split sizes, in
    report order. intersections: which of them are intersections of several keys.
    Finds: overrides naming unknown subgroups; judged subgroups with no test samples;
    teacher / one-hot drop rules that can never FAIL on a subgroup (they could not detect
    any harm there); and, when insufficient evidence blocks, judged subgroups below
    ``min_samples`` or too small for their absolute floor ever to be shown. Each of those
    would reject the job after training, or let it ship unjudged. Intersections add to the
    marginals' guarantees rather than carry them: one under ``min_samples`` is judged, but
    its insufficient evidence does not block (``judge.advisory_subgroups``), and one where
    a drop rule could never FAIL is left to ``preflight_notes`` to state.
    """
    if len(group_names) != len(test_group_counts):
        raise ValueError(f"{len(group_names)} group names but {len(test_group_counts)} counts")
    problems = []
    unknown = [g for g in spec.min_accuracy_by_group if g not in set(group_names)]
    if unknown:
        problems.append(f"guardrails.min_accuracy_by_group names unknown subgroup(s) "
                        f"{', '.join(map(repr, unknown))}; the subgroups are: "
                        f"{', '.join(group_names):.2000}")
    strictest = alpha_of(spec) / family_size(spec, group_names, test_group_counts)
    cells = set(intersections)
    for name, n in zip(group_names, test_group_counts):
        if name in cells and n < spec.min_samples:
            continue
        rules = judging_rules(spec, name)
        if rules:
            problems += _group_problems(spec, name, int(n), rules)
        if n and name not in cells:
            problems += [_never_fails(rule, name, int(n), getattr(spec, rule), strictest)
                         for rule in _USER_DROP_RULES if getattr(spec, rule) is not None
                         and paired_mde(int(n), getattr(spec, rule), strictest) is None]
    return problems


def family_size(spec: GuardrailSpec, group_names: Sequence[str],
                test_group_counts: Sequence[int]) -> int:
    """Checks tested together in the largest stage (an exported artifact), at least 1."""
    return max(1, sum(len(judging_rules(spec, g, artifact=True))
                      for g, n in zip(group_names, test_group_counts) if n))


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
    z = z_for(alpha_of(spec))
    best_low = wilson_interval(n, n, z)[0]
    if floor <= best_low + TOLERANCE:
        return []
    if floor >= 1:
        need = "use a floor below 100%: no finite sample shows an accuracy of 100%"
    else:
        need = (f"use at least {math.ceil(floor * z ** 2 / (1 - floor))} test samples of it "
                "or a lower floor")
    return [f"subgroup {name!r} has {n} test samples: even {n}/{n} correct gives a one-sided "
            f"{pct(spec.confidence)} lower bound of {pct(best_low)}, under its floor "
            f"{pct(floor)}, so it can never PASS and would block the job; {need}, or set "
            "block_on_insufficient_evidence: false"]


def _never_fails(rule: str, name: str, n: int, margin: float, alpha: float) -> str:
    need = _smallest_n(lambda m: paired_mde(m, margin, alpha) is not None)
    return (f"subgroup {name!r} has {n} test samples: under {rule} (margin {pp(margin)}) even a "
            f"model wrong on every example its reference gets right would not be shown to drop "
            f"more than the margin at the strictest FAIL threshold {alpha:.3g}, so the rule can "
            f"never FAIL there and would let any harm ship; use at least {need} test samples "
            "of it, a lower confidence, or remove the rule")


def preflight_notes(spec: GuardrailSpec, group_names: Sequence[str],
                    test_group_counts: Sequence[int], *, artifacts: bool = True) -> list[str]:
    """What each paired drop rule can show on each subgroup, one line each.

    artifacts: exported artifacts will be judged too (so max_drop_vs_student applies).
    """
    alpha = alpha_of(spec)
    strictest = alpha / family_size(spec, group_names, test_group_counts)
    rules = [r for r in DROP_RULES if getattr(spec, r) is not None
             and (artifacts or r != "max_drop_vs_student")]
    return [_note(rule, name, int(n), getattr(spec, rule), alpha, strictest)
            for rule in rules for name, n in zip(group_names, test_group_counts) if n]


def detectable_drops(spec: GuardrailSpec, rule: str, group_names: Sequence[str],
                     counts: Sequence[int]) -> list[dict[str, Any]]:
    """Per subgroup with samples: the smallest drop ``rule``'s paired test could show there
    at the strictest FAIL threshold (every disagreement against the candidate); None where
    it can show none."""
    strictest = alpha_of(spec) / family_size(spec, group_names, counts)
    margin = getattr(spec, rule)
    return [{"subgroup": name, "n": int(n),
             "min_detectable_drop": paired_mde(int(n), margin, strictest)}
            for name, n in zip(group_names, counts) if n]


def _note(rule: str, name: str, n: int, margin: float, alpha: float, strictest: float) -> str:
    mde = paired_mde(n, margin, strictest)
    shows = ("could not show any drop (it can never FAIL)" if mde is None
             else f"shows a drop only from {pp(mde)} up")
    ties = _max_ties(n, margin, alpha)
    if ties == 0:
        need = _smallest_n(lambda m: _max_ties(m, margin, alpha) > 0)
        tolerance = (f"PASSes only if both models agree on every example (a candidate "
                     f"disagreeing on any needs at least {need} test samples)")
    else:
        tolerance = (f"PASSes an equally accurate candidate disagreeing on up to "
                     f"{2 * ties} examples")
    return (f"{rule} on {name!r} (n={n}, margin {pp(margin)}): at the strictest FAIL "
            f"threshold {strictest:.3g} it {shows}; at {pct(1 - alpha)} it {tolerance}")


def _max_ties(n: int, margin: float, alpha: float) -> int:
    """The largest k such that b = c = k still PASSes (upper bound under the margin).

    The bound widens with k, so the passing k form a prefix of 0..n // 2: bisect it.
    """
    z = z_for(alpha)
    lo, hi = 0, n // 2 + 1  # k = 0 always passes (identical answers); hi is taken to fail
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if tango_interval(mid, mid, n, z)[1] < margin:
            lo = mid
        else:
            hi = mid
    return lo


def _smallest_n(ok: Callable[[int], bool], limit: int = 10**8) -> int:
    """The smallest n >= 1 with ok(n), for a predicate false then true in n."""
    hi = 1
    while not ok(hi):
        if hi > limit:
            return limit
        hi *= 2
    return bisect_first(ok, hi // 2, hi)  # ok(hi // 2) is false (or it is 0)


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
    if spec.max_drop_vs_student is not None:
        lines.append(f"max_drop_vs_student: no exported artifact more than "
                     f"{100 * spec.max_drop_vs_student:.1f} pp below its student on any subgroup")
    if not lines:
        return ["no guardrail rule is set: nothing is judged"]
    blocks = "blocks" if spec.block_on_insufficient_evidence else "does not block"
    lines.append(f"min_samples: {spec.min_samples}; insufficient evidence {blocks} shipping")
    lines.append(f"confidence: {pct(spec.confidence)} one-sided for every PASS; false FAILs "
                 f"held to {pct(1 - spec.confidence)} per stage ({spec.multiplicity})")
    return lines
