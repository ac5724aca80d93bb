"""What paired drop rules can show on a test split, known before any training."""

import re

import pytest

from compression.evaluation.stats import tango_interval, z_for
from compression.guardrails import check_policy, detectable_drops, preflight_notes
from compression.guardrails.evidence import paired_mde, tango_pvalue
from compression.guardrails.policy import family_size
from compression.spec import GuardrailSpec

Z95 = z_for(0.05)


def test_family_size_counts_every_rule_on_every_subgroup_of_an_artifact():
    policy = GuardrailSpec(min_accuracy=0.5, max_drop_vs_one_hot=0.03)  # + max_drop_vs_student
    assert family_size(policy, ["a", "b", "c"], [100, 100, 0]) == 6
    assert family_size(GuardrailSpec(max_drop_vs_student=None), ["a"], [100]) == 1  # at least 1


def test_a_drop_rule_that_can_never_fail_is_a_problem_naming_the_samples_it_needs():
    policy = GuardrailSpec(max_drop_vs_one_hot=0.03, block_on_insufficient_evidence=False)
    problems = check_policy(policy, ["big", "small"], [1000, 5])
    (problem,) = problems
    assert problem.startswith("subgroup 'small' has 5 test samples: under max_drop_vs_one_hot")
    assert "can never FAIL" in problem
    strictest = 0.05 / 4  # two paired rules (one-hot, student) on two subgroups
    assert f"threshold {strictest:.3g}" in problem
    need = int(re.search(r"use at least (\d+) test samples", problem).group(1))
    assert paired_mde(need, 0.03, strictest) is not None
    assert paired_mde(need - 1, 0.03, strictest) is None
    # the default artifact rule never rejects a job at submission
    assert check_policy(GuardrailSpec(block_on_insufficient_evidence=False), ["s"], [3]) == []


def test_notes_state_the_smallest_drop_and_the_disagreement_a_pass_tolerates():
    policy = GuardrailSpec(max_drop_vs_one_hot=0.03, max_drop_vs_student=None)
    small, big = preflight_notes(policy, ["small", "big"], [100, 1000])
    strictest = 0.05 / 2
    assert small.startswith("max_drop_vs_one_hot on 'small' (n=100, margin 3.0 pp)")
    assert f"shows a drop only from {100 * paired_mde(100, 0.03, strictest):.1f} pp up" in small
    # one disagreement each way at n = 100 leaves the upper bound at 3.2 pp > 3 pp
    assert "PASSes only if both models agree on every example" in small
    need = int(re.search(r"needs at least (\d+) test samples", small).group(1))
    assert tango_interval(1, 1, need, Z95)[1] < 0.03 <= tango_interval(1, 1, need - 1, Z95)[1]
    ties = int(re.search(r"disagreeing on up to (\d+) examples", big).group(1)) // 2
    assert tango_interval(ties, ties, 1000, Z95)[1] < 0.03
    assert tango_interval(ties + 1, ties + 1, 1000, Z95)[1] >= 0.03
    assert preflight_notes(policy, ["empty"], [0]) == []


def test_notes_cover_the_artifact_rule_only_when_artifacts_are_built():
    notes = preflight_notes(GuardrailSpec(), ["a"], [400])
    assert len(notes) == 1 and notes[0].startswith("max_drop_vs_student on 'a'")
    assert preflight_notes(GuardrailSpec(), ["a"], [400], artifacts=False) == []


def test_detectable_drops_are_the_smallest_drop_shown_under_holm_over_the_judged_subgroups():
    harm = GuardrailSpec(max_drop_vs_one_hot=0.0, max_drop_vs_student=None)
    drops = detectable_drops(harm, "max_drop_vs_one_hot", ["tail", "mid", "head", "none"],
                             [4, 40, 400, 0])
    assert [d["subgroup"] for d in drops] == ["tail", "mid", "head"]  # no samples: not judged
    strictest = 0.05 / 3
    # b flips against the candidate and none for it: b must reach the Holm-adjusted level
    for d, n in zip(drops, (4, 40, 400)):
        assert d["n"] == n and d["min_detectable_drop"] == paired_mde(n, 0.0, strictest)
    assert drops[0]["min_detectable_drop"] is None  # 4 images can show no drop at all
    assert drops[1]["min_detectable_drop"] > drops[2]["min_detectable_drop"] > 0
    b = round(drops[2]["min_detectable_drop"] * 400)
    assert tango_pvalue(b, 0, 400, 0.0) <= strictest < tango_pvalue(b - 1, 0, 400, 0.0)


def test_the_holdout_power_figures_the_docs_quote():
    """README, docs/results.md and the study's holdout size cite these numbers."""
    harm = GuardrailSpec(max_drop_vs_one_hot=0.0, max_drop_vs_student=None)
    names = [str(c) for c in range(10)]
    for n, drop in ((200, 0.035), (40, 0.175)):
        drops = detectable_drops(harm, "max_drop_vs_one_hot", names, [n] * 10)
        assert drops[0]["min_detectable_drop"] == pytest.approx(drop)
    strictest = 0.05 / 10  # Holm's first threshold over 10 classes
    # 10% and 15% of 200 images change answer: a 6- and an 8-point drop are the smallest shown
    assert tango_pvalue(16, 4, 200, 0.0) <= strictest < tango_pvalue(15, 5, 200, 0.0)
    assert tango_pvalue(23, 7, 200, 0.0) <= strictest < tango_pvalue(22, 8, 200, 0.0)
    # 15% of 40 images: no split of the 6 changed answers is shown
    assert all(tango_pvalue(b, 6 - b, 40, 0.0) > strictest for b in range(7))
