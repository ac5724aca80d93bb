"""The text `tpet run`, `tpet report` and the demo print: read from the typed report, naming
the reason for the verdict, not only the state."""

import dataclasses

import pytest

from compression.errors import InvalidInput
from compression.spec import GuardrailSpec
from service.report_view import format_report, verdict_reason
from tests.reports import eval_report, job_report, paired_reports

POLICY = GuardrailSpec(min_accuracy=0.7, min_samples=10)


def test_a_fail_names_the_stage_subgroup_rule_and_figures():
    report = job_report({"student": eval_report("student", a=(48, 50), b=(20, 50))}, POLICY)
    text = format_report(report.to_dict())  # report.json's data reads as the typed report
    assert "stage 'student' did not pass: FAIL on 'b' (min_accuracy)" in text
    assert ("student: FAIL (blocked; 2 checks at 95.0% one-sided, FAIL thresholds by holm over "
            "2 tests)") in text
    assert "status: REJECTED (nothing ships)" in text
    why = text.split("why: ")[1]
    assert why.startswith("stage 'student' is FAIL and cannot ship")
    assert "- FAIL: min_accuracy on 'b': accuracy 40.0% (20/50), floor 70.0%; harm shown" in why
    assert "p = 1.84e-06 <= 0.025" in why and "'a'" not in why  # a PASSes: not a reason


def test_a_blocking_insufficient_evidence_says_so_with_what_the_test_could_show():
    one_hot, student = paired_reports(a=(80, 10, 2, 100))
    policy = GuardrailSpec(max_drop_vs_one_hot=0.03)
    report = job_report({"student": dataclasses.replace(student, name="student")}, policy,
                        refs_student={"one_hot": one_hot})
    why = verdict_reason(report)
    assert "is INSUFFICIENT_EVIDENCE and cannot ship" in why
    assert "insufficient evidence blocks under this policy" in why
    assert "max_drop_vs_one_hot on 'a'" in why and "b=10 c=2" in why
    assert "p = 0.0653 > 0.05" in why
    mde = report.stages[0].checks[0].mde
    assert f"(the smallest harm it could show: {100 * mde:.1f} pp)" in why


def test_what_ships_says_whether_it_was_judged():
    good = eval_report("student", a=(48, 50), b=(46, 50))
    report = job_report({"student": good}, POLICY, ship=("student",))
    assert verdict_reason(report) == ("'student' ships: 2 of 2 checks PASS (2 checks at 95.0% "
                                      "one-sided, FAIL thresholds by holm over 2 tests)")
    lenient = dataclasses.replace(POLICY, min_samples=60, block_on_insufficient_evidence=False)
    why = verdict_reason(job_report({"student": good}, lenient, ship=("student",)))
    assert why.startswith("'student' ships: 0 of 2 checks PASS")
    assert "INSUFFICIENT_EVIDENCE does not block under this policy, on:" in why
    unjudged = job_report({"student": good}, GuardrailSpec(max_drop_vs_student=None),
                          ship=("student",))
    text = format_report(unjudged)
    assert "guardrails: no rule judged any stage" in text and "passed its" not in text
    assert "student: NOT JUDGED (passed; no rule applies)" in text
    assert "why: 'student' ships NOT JUDGED: no guardrail rule applies to it" in text


def test_a_malformed_report_is_refused_not_half_shown():
    data = job_report({"student": eval_report("student", a=(48, 50))}, POLICY).to_dict()
    del data["guardrails"]
    with pytest.raises(InvalidInput, match="guardrails: missing"):
        format_report(data)
