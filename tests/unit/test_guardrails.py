import json
import math
import random

import pytest
import torch

from compression.errors import InvalidInput
from compression.evaluation import EvalReport, GroupMetrics, Outcomes, wilson_interval
from compression.evaluation.stats import tango_interval, tango_pvalue, z_for
from compression.guardrails import (FAIL, INSUFFICIENT_EVIDENCE, PASS, StageVerdict,
                                    first_failing_stage, judge, summarize)
from compression.guardrails.evidence import paired_mde
from compression.guardrails.multiplicity import adjust
from compression.spec import GuardrailSpec

Z95 = 1.6448536269514722  # one-sided 95%: every PASS bound at the default confidence


def metrics(name, correct, n):
    low, high = wilson_interval(correct, n)
    return GroupMetrics(name, n, correct, correct / n if n else None, low, high)


def report(name, **counts):
    """counts: group=(correct, n) -> an EvalReport with those groups, in that order."""
    hits = {g: [True] * c + [False] * (n - c) for g, (c, n) in counts.items()}
    return from_hits(name, hits)


def from_hits(name, hits):
    """hits: group -> per-example correctness, in example order -> report with outcomes."""
    groups = tuple(metrics(g, sum(h), len(h)) for g, h in hits.items())
    flat = [x for h in hits.values() for x in h]
    ids = [i for i, h in enumerate(hits.values()) for _ in h]
    group = torch.tensor(ids, dtype=torch.long)
    outcomes = Outcomes(torch.tensor(flat, dtype=torch.bool), torch.zeros_like(group), group,
                        len(hits))
    overall = metrics("overall", sum(flat), len(flat))
    return EvalReport(name, overall, groups, groups, None, None, 3, None, [], outcomes=outcomes)


def pair(**tables):
    """tables: group=(a, b, c, d): both right, reference only, candidate only, both wrong
    -> (reference report, candidate report) on the same examples."""
    ref = {g: [True] * (a + b) + [False] * (c + d) for g, (a, b, c, d) in tables.items()}
    cand = {g: [True] * a + [False] * b + [True] * c + [False] * d
            for g, (a, b, c, d) in tables.items()}
    return from_hits("reference", ref), from_hits("candidate", cand)


def by_group(verdict, rule):
    return {c.subgroup: c for c in verdict.checks if c.rule == rule}


def score_p(correct, n, floor):
    """One-sided score p-value of harm (accuracy below the floor), by hand."""
    z = (correct / n - floor) / math.sqrt(floor * (1 - floor) / n)
    return 0.5 * math.erfc(-z / math.sqrt(2))


def test_absolute_floor_fails_only_when_harm_is_shown_after_holm():
    r = report("student", a=(45, 50), b=(30, 50), c=(35, 50), d=(20, 50))
    v = judge(r, GuardrailSpec(min_accuracy=0.7), "student")
    checks = by_group(v, "min_accuracy")
    assert (v.family_size, v.multiplicity, v.confidence) == (4, "holm", 0.95)
    # a: 0.9, one-sided 95% Wilson lower bound above 0.7
    assert checks["a"].verdict == PASS
    assert checks["a"].interval[0] == pytest.approx(wilson_interval(45, 50, Z95)[0])
    # b: 0.6 is 1.54 standard errors under 0.7: p = 0.061, not below Holm's thresholds
    assert checks["b"].p_value == pytest.approx(score_p(30, 50, 0.7))
    assert checks["b"].verdict == INSUFFICIENT_EVIDENCE
    # c: exactly at the floor: neither shown
    assert checks["c"].verdict == INSUFFICIENT_EVIDENCE
    # d: 0.4 is 4.6 standard errors under: the smallest p meets alpha / 4
    assert checks["d"].p_value == pytest.approx(score_p(20, 50, 0.7)) and checks["d"].p_value < 1e-5
    assert (checks["d"].verdict, checks["d"].threshold) == (FAIL, pytest.approx(0.05 / 4))
    assert "harm shown" in checks["d"].message
    assert checks["a"].method == "wilson_score" and checks["a"].b is None
    assert (checks["a"].value, checks["a"].floor, checks["a"].n) == (0.9, 0.7, 50)
    assert v.failing_subgroups == ("b", "c", "d") and not v.passed
    assert [(g.floor, g.verdict) for g in v.groups] == [
        (0.7, PASS), (0.7, INSUFFICIENT_EVIDENCE), (0.7, INSUFFICIENT_EVIDENCE), (0.7, FAIL)]


def test_min_samples_withholds_a_pass_but_not_a_shown_fail():
    r = report("student", full=(25, 25), zero=(0, 10))
    v = judge(r, GuardrailSpec(min_accuracy=0.7, min_samples=30), "student")
    checks = by_group(v, "min_accuracy")
    assert checks["full"].verdict == INSUFFICIENT_EVIDENCE
    assert "fewer than min_samples (30)" in checks["full"].message
    assert checks["zero"].verdict == FAIL
    relaxed = by_group(judge(r, GuardrailSpec(min_accuracy=0.7, min_samples=10), "s"),
                       "min_accuracy")
    assert [relaxed[g].verdict for g in ("full", "zero")] == [PASS, FAIL]


def test_an_empty_subgroup_is_insufficient_evidence_and_not_tested():
    r = report("student", a=(45, 50), empty=(0, 0))
    v = judge(r, GuardrailSpec(min_accuracy=0.5), "student")
    empty = by_group(v, "min_accuracy")["empty"]
    assert (empty.verdict, empty.value, empty.ci, empty.p_value) == (
        INSUFFICIENT_EVIDENCE, None, (0.0, 1.0), None)
    assert "no test samples" in empty.message
    assert v.family_size == 1 and v.failing_subgroups == ("empty",)


def test_identical_answers_pass_any_drop_rule_with_margin_at_least_zero():
    one_hot, student = pair(perfect=(100, 0, 0, 0), same=(80, 0, 0, 20), tiny=(3, 0, 0, 2))
    for margin in (0.0, 0.03):
        v = judge(student, GuardrailSpec(max_drop_vs_one_hot=margin), "student", one_hot=one_hot)
        for c in v.checks:
            assert (c.verdict, c.estimate, c.interval, c.b, c.c) == (PASS, 0.0, (0.0, 0.0), 0, 0)
            assert "same answer on all" in c.message
        assert v.passed


def test_the_long_tailed_digits_case_is_no_longer_rejected_for_noise():
    # 100 test images per class; the student beats the one-hot student overall.
    one_hot, student = pair(
        c0=(100, 0, 0, 0),   # both 100/100: was INSUFFICIENT_EVIDENCE with one-sample floors
        c1=(87, 7, 2, 4),    # one-hot 94/100, student 89/100: 5 points at n = 100 was a FAIL
        c2=(60, 2, 30, 8),   # the student 21 points better
        c3=(90, 1, 1, 8))
    v = judge(student, GuardrailSpec(max_drop_vs_one_hot=0.03), "student", one_hot=one_hot)
    checks = by_group(v, "max_drop_vs_one_hot")
    assert checks["c0"].verdict == PASS
    c1 = checks["c1"]
    assert (c1.b, c1.c, c1.n, c1.estimate) == (7, 2, 100, pytest.approx(0.05))
    assert c1.p_value == pytest.approx(tango_pvalue(7, 2, 100, 0.03))
    assert c1.verdict == INSUFFICIENT_EVIDENCE  # neither harm nor safety is shown at n = 100
    assert checks["c2"].verdict == PASS and checks["c2"].estimate == pytest.approx(-0.28)
    # one disagreement each way: upper bound 3.2 pp, just over the 3 pp margin
    assert checks["c3"].interval[1] == pytest.approx(tango_interval(1, 1, 100, Z95)[1])
    assert checks["c3"].verdict == INSUFFICIENT_EVIDENCE
    assert FAIL not in [c.verdict for c in v.checks]
    assert checks["c1"].reference == 0.94 and checks["c1"].floor == pytest.approx(0.91)
    assert "b=7 c=2" in c1.message and "drop 5.0 pp" in c1.message


def test_paired_drop_pass_fail_and_the_interval_agree():
    ref, cand = pair(safe=(900, 5, 5, 90), harm=(700, 150, 10, 140), near=(900, 30, 10, 60))
    v = judge(cand, GuardrailSpec(max_drop_vs_teacher=0.03), "onnx", teacher=ref)
    checks = by_group(v, "max_drop_vs_teacher")
    safe, harm, near = checks["safe"], checks["harm"], checks["near"]
    assert safe.verdict == PASS and safe.interval[1] < 0.03
    assert harm.verdict == FAIL and harm.interval[0] > 0.03
    low = tango_interval(150, 10, 1000, z_for(harm.threshold))[0]
    assert harm.interval[0] == pytest.approx(low)
    assert near.verdict == INSUFFICIENT_EVIDENCE  # 2 pp measured, upper bound 3.5 pp
    assert near.interval[0] < 0.03 < near.interval[1]
    assert [c.method for c in v.checks] == ["tango_score"] * 3
    assert near.mde == pytest.approx(paired_mde(1000, 0.03, near.threshold))


def test_verdicts_always_match_their_reported_interval_and_p_value():
    rng = random.Random(7)
    tables = {}
    for i in range(40):
        n = rng.choice([30, 100, 400])
        b, c = rng.randint(0, n // 5), rng.randint(0, n // 10)
        tables[f"g{i}"] = (n - b - c - 5, b, c, 5)
    ref, cand = pair(**tables)
    for method in ("holm", "bonferroni", "none"):
        v = judge(cand, GuardrailSpec(max_drop_vs_one_hot=0.05, multiplicity=method,
                                      min_samples=1), "student", one_hot=ref)
        for c in v.checks:
            assert (c.verdict == FAIL) == (c.p_value <= c.threshold) == (c.interval[0] > 0.05)
            if c.verdict != FAIL and c.b + c.c:
                assert (c.verdict == PASS) == (c.interval[1] < 0.05)


def test_holm_thresholds_step_down_and_bonferroni_and_none_are_flat():
    # Holm (1979) by hand, alpha 0.05 over 4: sorted 0.005 <= 0.0125, 0.01 <= 0.0167,
    # 0.03 > 0.025 stops; 0.04 keeps the stopping threshold.
    got = adjust([0.01, 0.04, 0.03, 0.005], 0.05, "holm")
    assert got == [(pytest.approx(0.05 / 3), True), (pytest.approx(0.025), False),
                   (pytest.approx(0.025), False), (pytest.approx(0.0125), True)]
    assert adjust([0.01, 0.04], 0.05, "bonferroni") == [(0.025, True), (0.025, False)]
    assert adjust([0.01, 0.04], 0.05, "none") == [(0.05, True), (0.05, True)]
    with pytest.raises(ValueError, match="unknown multiplicity"):
        adjust([0.1], 0.05, "fdr")


def test_multiplicity_none_fails_what_holm_leaves_insufficient():
    # 10 subgroups; one drops 5 pp at n = 400 with every disagreement against it: harm
    # p-value between 0.05 / 10 and 0.05.
    tables = {f"g{i}": (380, 0, 0, 20) for i in range(9)}
    tables["weak"] = (360, 20, 0, 20)
    ref, cand = pair(**tables)
    p = tango_pvalue(20, 0, 400, 0.03)
    assert 0.005 < p < 0.05
    verdicts = {m: by_group(judge(cand, GuardrailSpec(max_drop_vs_one_hot=0.03,
                                                      multiplicity=m), "s", one_hot=ref),
                            "max_drop_vs_one_hot")["weak"] for m in ("none", "holm")}
    assert verdicts["none"].verdict == FAIL and verdicts["none"].threshold == 0.05
    assert verdicts["holm"].verdict == INSUFFICIENT_EVIDENCE
    assert verdicts["holm"].threshold == pytest.approx(0.005)


def test_drop_vs_student_judges_artifacts_only_with_its_default_margin():
    student, int8 = pair(a=(900, 3, 2, 95), b=(40, 0, 0, 10), empty=(0, 0, 0, 0))
    assert GuardrailSpec().max_drop_vs_student == 0.01
    assert judge(student, GuardrailSpec(), "student").checks == ()
    v = judge(int8, GuardrailSpec(), "int8", student=student)
    checks = by_group(v, "max_drop_vs_student")
    assert set(checks) == {"a", "b"}  # no pairs in an empty subgroup: nothing to compare
    assert checks["a"].verdict == PASS and checks["b"].verdict == PASS
    assert judge(int8, GuardrailSpec(max_drop_vs_student=None), "int8",
                 student=student).checks == ()


def test_relative_rules_need_a_paired_reference_on_the_same_split():
    student = report("student", a=(45, 50))
    with pytest.raises(ValueError, match="max_drop_vs_teacher"):
        judge(student, GuardrailSpec(max_drop_vs_teacher=0.1), "student")
    with pytest.raises(ValueError, match="same test split"):
        judge(student, GuardrailSpec(max_drop_vs_one_hot=0.1), "student",
              one_hot=report("one_hot", a=(45, 60)))
    unpaired = EvalReport.from_dict(report("teacher", a=(40, 50)).to_dict())
    with pytest.raises(ValueError, match="per-example outcomes"):
        judge(student, GuardrailSpec(max_drop_vs_teacher=0.1), "student", teacher=unpaired)


def test_worst_group_floor_is_one_check_decided_by_the_worst_verdict():
    r = report("student", a=(45, 50), b=(20, 50), c=(35, 50))
    v = judge(r, GuardrailSpec(min_worst_group_accuracy=0.7), "student")
    (check,) = v.checks
    assert (check.rule, check.subgroup, check.verdict) == ("min_worst_group_accuracy", "b", FAIL)
    assert v.family_size == 3
    assert [g.verdict for g in v.groups] == [PASS, FAIL, INSUFFICIENT_EVIDENCE]
    (check,) = judge(report("s", a=(45, 50), d=(890, 1000)),
                     GuardrailSpec(min_worst_group_accuracy=0.7), "s").checks
    assert (check.subgroup, check.value, check.verdict) == ("d", 0.89, PASS)


def test_gap_rule_compares_independent_subgroups_with_the_best_solid_one():
    r = report("student", a=(950, 1000), b=(880, 1000), c=(30, 50), tiny=(5, 5))
    v = judge(r, GuardrailSpec(max_group_gap=0.1), "student")
    (check,) = v.checks
    # best is a (0.95), not tiny's 5/5: it has fewer than min_samples samples
    assert check.reference == 0.95 and check.floor == pytest.approx(0.85)
    assert (check.subgroup, check.verdict, check.method) == ("c", FAIL, "newcombe_hybrid")
    assert check.estimate == pytest.approx(0.35)
    verdicts = {g.name: g.verdict for g in v.groups}
    # b: a 7 pp gap with a 95% upper bound of 9.1 pp passes; a against itself is exactly 0
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
    failing = judge(report("s", b=(10, 50)), GuardrailSpec(
        min_accuracy=0.7, block_on_insufficient_evidence=False), "s")
    assert not failing.passed


def test_no_rule_means_no_check_and_a_pass():
    v = judge(report("student", a=(1, 50)), GuardrailSpec(), "student")
    assert v.checks == () and v.passed and v.verdict == PASS and v.family_size == 0
    assert (v.groups[0].floor, v.groups[0].verdict) == (None, None)


def test_first_failing_stage_and_summary_name_stages_and_subgroups():
    policy = GuardrailSpec(min_accuracy=0.7)
    good = judge(report("student", a=(45, 50)), policy, "student")
    bad = judge(report("int8", a=(45, 50), b=(10, 50), c=(35, 50)), policy, "int8")
    assert first_failing_stage([good, bad]) == "int8"
    assert first_failing_stage([good]) is None
    assert summarize([good, bad]) == ("stage 'int8' did not pass: FAIL on 'b' (min_accuracy); "
                                      "INSUFFICIENT_EVIDENCE on 'c' (min_accuracy)")
    assert summarize([good]) == "every stage passed its guardrails"


def test_verdict_round_trips_through_json_and_reads_older_reports():
    teacher, student = pair(a=(880, 20, 10, 90), b=(40, 5, 0, 5))
    v = judge(student, GuardrailSpec(min_accuracy=0.5, max_drop_vs_teacher=0.05,
                                     min_worst_group_accuracy=0.6,
                                     block_on_insufficient_evidence=False),
              "student", teacher=teacher)
    data = json.loads(json.dumps(v.to_dict(), allow_nan=False))
    assert data["passed"] == v.passed and data["failing_subgroups"] == list(v.failing_subgroups)
    assert (data["confidence"], data["multiplicity"], data["family_size"]) == (0.95, "holm", 6)
    drop = next(c for c in data["checks"] if c["rule"] == "max_drop_vs_teacher")
    assert {"method", "estimate", "margin", "interval", "p_value", "threshold", "b", "c",
            "mde"} <= set(drop)
    assert StageVerdict.from_dict(data) == v
    for c in data["checks"]:  # a report written before the tests were recorded
        for key in ("method", "estimate", "margin", "interval", "p_value", "threshold", "b",
                    "c", "mde"):
            del c[key]
    for key in ("confidence", "multiplicity", "family_size"):
        del data[key]
    assert StageVerdict.from_dict(data).checks[0].p_value is None
    data["checks"][0]["verdict"] = "MAYBE"
    with pytest.raises(InvalidInput, match="MAYBE"):
        StageVerdict.from_dict(data)
    with pytest.raises(InvalidInput, match="not a valid guardrail verdict"):
        StageVerdict.from_dict({"stage": "x"})


def test_policy_statistics_are_validated_with_the_job_spec():
    from compression.spec import parse_spec
    with pytest.raises(InvalidInput) as err:
        parse_spec({"guardrails": {"confidence": 1.0, "multiplicity": "fdr",
                                   "max_drop_vs_student": 1.5}})
    text = "\n".join(err.value.problems)
    assert "confidence is 1.0; it must be in (0.5, 1)" in text
    assert "fdr" in text and "holm" in text
    assert "max_drop_vs_student" in text
    spec = parse_spec({"guardrails": {"confidence": 0.9, "multiplicity": "bonferroni"}})
    assert (spec.guardrails.confidence, spec.guardrails.multiplicity) == (0.9, "bonferroni")


def test_confidence_sets_the_pass_level_and_the_family_fail_rate():
    r = report("student", a=(40, 50), d=(25, 50))
    loose = by_group(judge(r, GuardrailSpec(min_accuracy=0.65, confidence=0.9), "s"),
                     "min_accuracy")
    strict = by_group(judge(r, GuardrailSpec(min_accuracy=0.65, confidence=0.99), "s"),
                      "min_accuracy")
    assert loose["d"].threshold == pytest.approx(0.1 / 2)
    assert strict["d"].threshold == pytest.approx(0.01 / 2)
    # 40/50 against 0.65: lower bound 0.718 at 90%, 0.642 at 99%
    assert loose["a"].interval[0] == pytest.approx(wilson_interval(40, 50, z_for(0.1))[0])
    assert (loose["a"].verdict, strict["a"].verdict) == (PASS, INSUFFICIENT_EVIDENCE)
    # 25/50 against 0.65: p = 0.013, under 0.05 but over 0.005
    assert (loose["d"].verdict, strict["d"].verdict) == (FAIL, INSUFFICIENT_EVIDENCE)
