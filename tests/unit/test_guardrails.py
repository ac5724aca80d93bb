import json

import pytest

from compression.errors import InvalidInput
from compression.evaluation import EvalReport, GroupMetrics, wilson_interval
from compression.guardrails import (FAIL, INSUFFICIENT_EVIDENCE, PASS, StageVerdict,
                                    first_failing_stage, judge, summarize)
from compression.spec import GuardrailSpec

# 95% Wilson intervals worked out by hand (z = 1.96):
#   centre = (p + z²/2n) / (1 + z²/n), half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
CI_45_50 = (0.7864, 0.9565)  # p 0.90: 0.87146 -/+ 0.08506
CI_30_50 = (0.4618, 0.7239)  # p 0.60: 0.59287 -/+ 0.13105 (reaches above 0.7)
CI_35_50 = (0.5625, 0.8090)  # p 0.70: 0.68574 -/+ 0.12324
CI_25_25 = (0.8668, 1.0)     # p 1: lower bound n / (n + z²) = 25 / 28.8416
CI_0_10 = (0.0, 0.2775)      # p 0: upper bound z² / (n + z²) = 3.8416 / 13.8416


def metrics(name, correct, n):
    low, high = wilson_interval(correct, n)
    return GroupMetrics(name, n, correct, correct / n if n else None, low, high)


def report(name, **counts):
    """counts: group=(correct, n) -> an EvalReport with those groups, in that order."""
    groups = tuple(metrics(g, c, n) for g, (c, n) in counts.items())
    overall = metrics("overall", sum(c for c, _ in counts.values()),
                      sum(n for _, n in counts.values()))
    return EvalReport(name, overall, groups, groups, None, None, 3, None, [])


def by_group(verdict, rule):
    return {c.subgroup: c for c in verdict.checks if c.rule == rule}


def test_absolute_floor_pass_fail_and_insufficient_with_hand_computed_intervals():
    r = report("student", a=(45, 50), b=(30, 50), c=(35, 50))
    v = judge(r, GuardrailSpec(min_accuracy=0.7), "student")
    checks = by_group(v, "min_accuracy")
    assert checks["a"].ci == pytest.approx(CI_45_50, abs=1e-4)
    assert checks["b"].ci == pytest.approx(CI_30_50, abs=1e-4)
    assert checks["c"].ci == pytest.approx(CI_35_50, abs=1e-4)
    assert [checks[g].verdict for g in "abc"] == [PASS, FAIL, INSUFFICIENT_EVIDENCE]
    # 30/50 fails although its interval reaches 0.724: measured below the floor is a FAIL.
    assert "below the floor 70.0%" in checks["b"].message
    assert "reaches below it" in checks["c"].message
    assert (checks["a"].value, checks["a"].floor, checks["a"].n) == (0.9, 0.7, 50)
    assert checks["a"].reference is None
    assert v.verdict == FAIL and not v.passed
    assert v.failing_subgroups == ("b", "c")
    assert [(g.floor, g.verdict) for g in v.groups] == [
        (0.7, PASS), (0.7, FAIL), (0.7, INSUFFICIENT_EVIDENCE)]


def test_overrides_replace_the_floor_and_a_zero_floor_judges_nothing():
    r = report("student", a=(45, 50), b=(30, 50), c=(35, 50))
    policy = GuardrailSpec(min_accuracy=0.7, min_accuracy_by_group={"b": 0.5, "c": 0.0})
    v = judge(r, policy, "student")
    checks = by_group(v, "min_accuracy")
    assert set(checks) == {"a", "b"}
    # 0.6 meets 0.5 but the interval's lower end 0.462 is under it.
    assert (checks["b"].floor, checks["b"].verdict) == (0.5, INSUFFICIENT_EVIDENCE)
    assert (v.groups[2].floor, v.groups[2].verdict) == (None, None)


def test_min_samples_withholds_a_pass_but_not_a_clear_fail():
    r = report("student", full=(25, 25), zero=(0, 10), half=(5, 10))
    v = judge(r, GuardrailSpec(min_accuracy=0.7, min_samples=30), "student")
    checks = by_group(v, "min_accuracy")
    assert checks["full"].ci == pytest.approx(CI_25_25, abs=1e-4)
    assert checks["zero"].ci == pytest.approx(CI_0_10, abs=1e-4)
    assert checks["full"].verdict == INSUFFICIENT_EVIDENCE  # interval above 0.7, but 25 < 30
    assert "fewer than min_samples (30)" in checks["full"].message
    assert checks["zero"].verdict == FAIL  # the whole interval is under the floor
    assert checks["half"].verdict == INSUFFICIENT_EVIDENCE  # 0.5 < 0.7, interval up to 0.763
    relaxed = by_group(judge(r, GuardrailSpec(min_accuracy=0.7, min_samples=10), "s"),
                       "min_accuracy")
    assert [relaxed[g].verdict for g in ("full", "zero", "half")] == [PASS, FAIL, FAIL]


def test_an_empty_subgroup_is_insufficient_evidence():
    r = report("student", a=(45, 50), empty=(0, 0))
    v = judge(r, GuardrailSpec(min_accuracy=0.5), "student")
    empty = by_group(v, "min_accuracy")["empty"]
    assert (empty.verdict, empty.value, empty.ci) == (INSUFFICIENT_EVIDENCE, None, (0.0, 1.0))
    assert "no test samples" in empty.message
    assert v.failing_subgroups == ("empty",)


def test_drop_vs_teacher_uses_the_teacher_accuracy_minus_max_drop():
    teacher = report("teacher", a=(900, 1000), b=(40, 50), c=(45, 50))
    student = report("student", a=(890, 1000), b=(35, 50), c=(30, 50))
    v = judge(student, GuardrailSpec(max_drop_vs_teacher=0.1), "student", teacher=teacher)
    checks = by_group(v, "max_drop_vs_teacher")
    assert checks["a"].floor == pytest.approx(0.8) and checks["a"].reference == 0.9
    assert checks["a"].verdict == PASS  # 0.89, interval [0.869, 0.908] above 0.8
    # 0.8 - 0.1 is 0.7000000000000001 in floating point; 35/50 = 0.7 still meets it.
    assert checks["b"].verdict == INSUFFICIENT_EVIDENCE
    assert checks["c"].verdict == FAIL  # 0.6 against 0.9 - 0.1
    assert "floor = teacher 90.0% - 10.0 pp = 80.0%" in checks["c"].message


def test_drop_vs_one_hot_and_the_highest_floor_binds_per_group():
    teacher = report("teacher", a=(900, 1000), b=(45, 50))
    one_hot = report("one_hot", a=(950, 1000), b=(42, 50))
    student = report("student", a=(900, 1000), b=(45, 50))
    policy = GuardrailSpec(max_drop_vs_teacher=0.2, max_drop_vs_one_hot=0.02)
    v = judge(student, policy, "onnx", teacher=teacher, one_hot=one_hot)
    checks = by_group(v, "max_drop_vs_one_hot")
    assert checks["a"].floor == pytest.approx(0.93) and checks["a"].verdict == FAIL
    assert checks["b"].floor == pytest.approx(0.82)
    assert checks["b"].verdict == INSUFFICIENT_EVIDENCE  # 0.9 meets 0.82; 0.786 does not
    assert all(c.verdict == PASS for c in by_group(v, "max_drop_vs_teacher").values())
    assert [g.floor for g in v.groups] == pytest.approx([0.93, 0.82])
    assert [g.verdict for g in v.groups] == [FAIL, INSUFFICIENT_EVIDENCE]
    assert v.stage == "onnx"


def test_relative_rules_need_a_reference_on_the_same_split():
    student = report("student", a=(45, 50))
    with pytest.raises(ValueError, match="max_drop_vs_teacher"):
        judge(student, GuardrailSpec(max_drop_vs_teacher=0.1), "student")
    with pytest.raises(ValueError, match="same test split"):
        judge(student, GuardrailSpec(max_drop_vs_one_hot=0.1), "student",
              one_hot=report("one_hot", a=(45, 60)))


def test_worst_group_floor_is_one_check_decided_by_the_worst_verdict():
    r = report("student", a=(45, 50), b=(30, 50), c=(35, 50))
    v = judge(r, GuardrailSpec(min_worst_group_accuracy=0.7), "student")
    (check,) = v.checks
    assert (check.rule, check.subgroup, check.verdict) == ("min_worst_group_accuracy", "b", FAIL)
    assert [g.verdict for g in v.groups] == [PASS, FAIL, INSUFFICIENT_EVIDENCE]
    # without b, c's straddling interval decides; with only solid groups it passes
    (check,) = judge(report("s", a=(45, 50), c=(35, 50)),
                     GuardrailSpec(min_worst_group_accuracy=0.7), "s").checks
    assert (check.subgroup, check.verdict) == ("c", INSUFFICIENT_EVIDENCE)
    (check,) = judge(report("s", a=(45, 50), d=(890, 1000)),
                     GuardrailSpec(min_worst_group_accuracy=0.7), "s").checks
    assert (check.subgroup, check.value, check.verdict) == ("d", 0.89, PASS)


def test_gap_rule_floors_every_group_at_best_minus_gap_ignoring_tiny_groups():
    r = report("student", a=(950, 1000), b=(880, 1000), c=(30, 50), tiny=(5, 5))
    v = judge(r, GuardrailSpec(max_group_gap=0.1), "student")
    (check,) = v.checks
    # best is a (0.95), not tiny's 5/5: it has fewer than min_samples samples
    assert check.reference == 0.95 and check.floor == pytest.approx(0.85)
    assert (check.subgroup, check.verdict) == ("c", FAIL)
    assert "best subgroup 95.0% - 10.0 pp = 85.0%" in check.message
    verdicts = {g.name: g.verdict for g in v.groups}
    assert verdicts == {"a": PASS, "b": PASS, "c": FAIL, "tiny": INSUFFICIENT_EVIDENCE}


def test_block_on_insufficient_evidence_decides_whether_insufficient_passes():
    r = report("student", a=(45, 50), c=(35, 50))
    blocking = judge(r, GuardrailSpec(min_accuracy=0.7), "student")
    lenient = judge(r, GuardrailSpec(min_accuracy=0.7, block_on_insufficient_evidence=False),
                    "student")
    assert not blocking.passed and blocking.failing_subgroups == ("c",)
    assert lenient.passed and lenient.failing_subgroups == ()
    assert lenient.verdict == INSUFFICIENT_EVIDENCE
    assert "passed (insufficient evidence not blocking)" in summarize([lenient])
    failing = judge(report("s", b=(30, 50)), GuardrailSpec(
        min_accuracy=0.7, block_on_insufficient_evidence=False), "s")
    assert not failing.passed


def test_no_rule_means_no_check_and_a_pass():
    v = judge(report("student", a=(1, 50)), GuardrailSpec(), "student")
    assert v.checks == () and v.passed and v.verdict == PASS
    assert (v.groups[0].floor, v.groups[0].verdict) == (None, None)


def test_first_failing_stage_and_summary_name_stages_and_subgroups():
    policy = GuardrailSpec(min_accuracy=0.7)
    good = judge(report("student", a=(45, 50)), policy, "student")
    bad = judge(report("int8", a=(45, 50), b=(30, 50), c=(35, 50)), policy, "int8")
    assert first_failing_stage([good, bad]) == "int8"
    assert first_failing_stage([good]) is None
    assert summarize([good, bad]) == ("stage 'int8' did not pass: FAIL on 'b' (min_accuracy); "
                                      "INSUFFICIENT_EVIDENCE on 'c' (min_accuracy)")
    assert summarize([good]) == "every stage passed its guardrails"


def test_verdict_round_trips_through_json_and_rejects_garbage():
    teacher = report("teacher", a=(900, 1000), b=(45, 50))
    v = judge(report("student", a=(890, 1000), b=(35, 50)),
              GuardrailSpec(min_accuracy=0.5, max_drop_vs_teacher=0.05,
                            min_worst_group_accuracy=0.6, block_on_insufficient_evidence=False),
              "student", teacher=teacher)
    data = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert data["passed"] == v.passed and data["failing_subgroups"] == list(v.failing_subgroups)
    assert StageVerdict.from_dict(data) == v
    data["checks"][0]["verdict"] = "MAYBE"
    with pytest.raises(InvalidInput, match="MAYBE"):
        StageVerdict.from_dict(data)
    with pytest.raises(InvalidInput, match="not a valid guardrail verdict"):
        StageVerdict.from_dict({"stage": "x"})
