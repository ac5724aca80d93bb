"""The versioned job report: a round trip through JSON, the previous unversioned layout, and a
clear refusal of malformed reports and of reports from a newer teachers-pet."""

import copy
import dataclasses
import json

import pytest

from compression.errors import InvalidInput
from compression.report import (REJECTED, SCHEMA_VERSION, SUCCEEDED, ExportRecord, JobReport,
                                TrainingSummary)
from compression.spec import GuardrailSpec
from tests.reports import eval_report, job_report, paired_reports

POLICY = GuardrailSpec(min_accuracy=0.7, min_samples=10)
GOOD = eval_report("student", a=(48, 50), b=(46, 50))
BAD = eval_report("student", a=(48, 50), b=(20, 50))  # b: 40%, shown under 70%


def full_report(**sections):
    """Every section set, with values a real job writes."""
    one_hot, student = paired_reports(a=(40, 3, 2, 50), b=(44, 0, 1, 50))
    student = dataclasses.replace(student, name="student")
    policy = dataclasses.replace(POLICY, max_drop_vs_one_hot=0.2)
    return job_report(
        {"student": student}, policy, references={"one_hot": one_hot}, ship=("student",),
        refs_student={"one_hot": one_hot}, environment={"python": "3.11.2", "ranks": 1},
        student_parameters=1234,
        training=TrainingSummary(2, 0, 0.41, 900.5, 3.2, True, {"weights": [0.5, 1.5]}),
        guardrail_preflight=("max_drop_vs_one_hot on 'a' (n=50, margin 20.0 pp): ...",),
        exports={"onnx": ExportRecord("SKIPPED", reason="export.onnx is false")},
        stage_seconds={"distill": 3.5}, mitigation={"name": "kd", "alpha": 0.5},
        **sections)


def round_trip(report):
    return JobReport.from_dict(json.loads(report.to_json()))


def test_every_section_survives_a_json_round_trip():
    report = full_report(harm_diagnosis={"harmed": ["a"]}, uploads={"uri": "s3://b/j"})
    back = round_trip(report)
    assert back == report and back.to_dict() == report.to_dict()
    data = report.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == JobReport.schema_version
    assert (data["status"], data["deployable"], data["shipped"]) == (SUCCEEDED, True, "student")
    check = back.stages[0].checks[-1]  # max_drop_vs_one_hot on b: the paired figures kept
    assert (check.rule, check.b, check.c, check.method) == ("max_drop_vs_one_hot", 0, 1,
                                                            "tango_score")
    assert back.evaluations["student"].outcomes is None  # in memory only, never in JSON


def test_the_json_layout_is_the_one_report_readers_know():
    data = full_report().to_dict()
    assert list(data) == [
        "schema_version", "status", "spec", "data", "evaluations", "guardrails", "shipped",
        "deployable", "environment", "student_parameters", "training", "teacher", "selection",
        "mitigation", "guardrail_preflight", "exports", "stage_seconds", "files"]
    assert list(data["guardrails"]) == ["policy", "first_failing_stage", "summary", "stages"]
    assert data["exports"]["onnx"] == {"status": "SKIPPED", "path": None, "passed": None,
                                       "reason": "export.onnx is false"}
    # optional sections appear only when set
    assert "harm_diagnosis" not in data and "presentation_errors" not in data


def test_a_report_without_schema_version_is_read_as_the_previous_layout():
    report = full_report()
    legacy = report.to_dict()
    del legacy["schema_version"]
    legacy["guardrails"]["summary"] = "words an older version wrote"  # derived: recomputed
    for stage in legacy["guardrails"]["stages"]:  # fields older reports lacked
        for key in ("confidence", "multiplicity", "family_size"):
            del stage[key]
    del legacy["guardrail_preflight"]
    back = JobReport.from_dict(legacy)
    assert back.guardrails.summary == report.guardrails.summary
    assert back.stages[0].confidence == 0.95 and back.guardrail_preflight == ()
    assert back.to_dict()["schema_version"] == SCHEMA_VERSION  # written back as current


def test_a_newer_report_is_refused_with_the_reason():
    data = full_report().to_dict()
    data["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(InvalidInput, match=f"schema_version {SCHEMA_VERSION + 1} is newer than "
                                           "this teachers-pet reads"):
        JobReport.from_dict(data)
    for bad in ("2", 0, True, None):
        data["schema_version"] = bad
        with pytest.raises(InvalidInput, match="schema_version is .* positive integer"):
            JobReport.from_dict(data)


@pytest.mark.parametrize("edit, problem", [
    (lambda d: d.pop("guardrails"), "guardrails: missing"),
    (lambda d: d.update(guardrail=d.pop("guardrails")), "guardrails: missing"),
    (lambda d: d["data"].pop("group_names"), "data: missing group_names"),
    (lambda d: d["data"].update(groups=[]), "data: unknown field(s) groups"),
    (lambda d: d["training"].update(epochs_run="2"), "training.epochs_run must be an integer"),
    (lambda d: d["evaluations"]["student"].pop("groups"), "evaluations: ['student']: "),
    (lambda d: d["guardrails"]["stages"][0].pop("checks"), "not a valid guardrail verdict"),
    (lambda d: d["guardrails"]["policy"].update(min_accuracy=0.1),
     "guardrails.policy differs from spec.guardrails"),
    (lambda d: d["guardrails"].update(first_failing_stage="student"),
     "first_failing_stage is 'student' but the stages say None"),
    (lambda d: d.update(status=REJECTED), "status is 'REJECTED' but shipped is 'student'"),
    (lambda d: d.update(deployable=False), "deployable is False"),
    (lambda d: d["spec"].update(name="bad name!"), "spec: name 'bad name!'"),
    (lambda d: d["files"].update({"x": {"sha256": "ab"}}), "files: ['x']: file: missing bytes"),
    (lambda d: d.update(harm_diagnosis=[1]), "harm_diagnosis: must be a JSON object"),
])
def test_a_malformed_report_is_refused_naming_the_problem(edit, problem):
    data = copy.deepcopy(full_report().to_dict())
    edit(data)
    with pytest.raises(InvalidInput) as raised:
        JobReport.from_dict(data)
    assert problem in str(raised.value)
    assert "not a valid job report" in str(raised.value)


def test_every_problem_is_listed_at_once():
    data = full_report().to_dict()
    del data["data"], data["evaluations"]
    with pytest.raises(InvalidInput) as raised:
        JobReport.from_dict(data)
    assert raised.value.problems == ["data: missing", "evaluations: missing"]


def test_shipped_must_name_a_stage_that_passed():
    report = job_report({"student": BAD}, POLICY)
    assert (report.status, report.deployable, report.shipped) == (REJECTED, False, None)
    with pytest.raises(ValueError, match="must be a judged stage that passed"):
        report.with_sections(shipped="student")
    with pytest.raises(ValueError, match="must be a judged stage that passed"):
        report.with_sections(shipped="int8")


def test_unknown_top_level_keys_are_kept_and_written_back():
    data = full_report().to_dict()
    data["cost"] = {"gpu_seconds": 12.5}
    back = JobReport.from_dict(data)
    assert back.extra == {"cost": {"gpu_seconds": 12.5}}
    assert back.to_dict() == data
    with pytest.raises(ValueError, match="are report sections"):
        back.with_sections(extra={"status": "SUCCEEDED"})


def test_the_deciding_stage_is_the_shipped_one_else_the_first_that_failed():
    stages = {"student": GOOD, "onnx": dataclasses.replace(GOOD, name="onnx"),
              "int8": dataclasses.replace(BAD, name="int8")}
    assert job_report(stages, POLICY, ship=("int8", "onnx")).deciding_stage.stage == "onnx"
    assert job_report(stages, POLICY).deciding_stage.stage == "int8"
    passing = {k: v for k, v in stages.items() if k != "int8"}
    assert job_report(passing, POLICY).deciding_stage.stage == "onnx"  # the last judged


def test_load_names_the_file(tmp_path):
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"status": "SUCCEEDED"}))
    with pytest.raises(InvalidInput, match=f"{path}: not a valid job report"):
        JobReport.load(path)
    path.write_text(full_report().to_json())
    assert JobReport.load(path) == full_report()
    with pytest.raises(InvalidInput, match="the report is not JSON"):
        JobReport.from_json("{")
