"""Job.result: the typed part of a finished job's report, converted from the typed JobReport."""

from __future__ import annotations

import json

from compression.report import ExportRecord, FileRecord
from compression.spec import GuardrailSpec
from service._proto import compress_pb2
from service.convert import job_to_proto
from service.convert_result import describe_result, report_to_result, result_of
from service.states import JobState
from service.store import JobRecord
from tests.reports import eval_report, job_report

# shirt: 20 of 100 right, far below a 0.5 floor; coat: 95 of 100
FAILING = eval_report("student", shirt=(20, 100), coat=(95, 100))
GOOD = eval_report("onnx", shirt=(90, 100), coat=(95, 100))
POLICY = GuardrailSpec(min_accuracy=0.5, max_drop_vs_student=None)


def test_a_rejected_job_names_each_failing_subgroup_with_its_rule_and_figures():
    report = job_report({"student": FAILING}, POLICY)
    result = report_to_result(report, "/srv/jobs/1")
    assert result.status == compress_pb2.REJECTED and not result.deployable
    assert not result.HasField("shipped")
    (stage,) = result.stages
    assert (stage.stage, stage.verdict, stage.passed) == ("student", compress_pb2.VERDICT_FAIL,
                                                          False)
    (shirt,) = stage.failing_subgroups
    assert (shirt.name, shirt.verdict, shirt.samples) == ("shirt", compress_pb2.VERDICT_FAIL, 100)
    assert shirt.accuracy == 0.2 and shirt.floor == 0.5 and list(shirt.rules) == ["min_accuracy"]
    assert [s for s in report.stages[0].failing_subgroups] == ["shirt"]
    assert len(stage.reasons) == 1 and "shirt" in stage.reasons[0]
    assert result.summary == report.guardrails.summary


def test_a_shipped_artifact_has_its_file_hash_uri_and_input_contract():
    files = {"model.onnx": FileRecord("ab" * 32, 1234), "report.json": FileRecord("cd" * 32, 9)}
    uploads = {"uri": "s3://b/job/", "marker": "s3://b/job/report.json", "artifacts": {
        "model.onnx": {"uri": "s3://b/job/model.onnx", "sha256": "ab" * 32, "bytes": 1234}}}
    report = job_report({"student": GOOD, "onnx": GOOD}, POLICY, ship=("onnx",),
                        exports={"onnx": ExportRecord("BUILT", "model.onnx", True)},
                        files=files, uploads=uploads)
    result = report_to_result(report, "/srv/jobs/2")
    assert result.status == compress_pb2.SUCCEEDED and result.deployable
    shipped = result.shipped
    assert (shipped.stage, shipped.file, shipped.path) == ("onnx", "model.onnx",
                                                           "/srv/jobs/2/model.onnx")
    assert (shipped.uri, shipped.sha256, shipped.bytes) == ("s3://b/job/model.onnx", "ab" * 32,
                                                            1234)
    contract = shipped.input_contract
    assert (contract.dtype, list(contract.shape), contract.layout) == ("float32", [1, 4, 4],
                                                                       "NCHW")
    assert list(contract.value_range) == [0.0, 1.0]
    assert json.loads(contract.json)["shape"] == ["batch", 1, 4, 4]
    assert [(s.stage, s.passed, len(s.failing_subgroups)) for s in result.stages] == [
        ("student", True, 0), ("onnx", True, 0)]


def test_a_shipped_student_without_upload_points_at_its_program():
    report = job_report({"student": GOOD}, POLICY, ship=("student",),
                        files={"student.pt2": FileRecord("ef" * 32, 77)})
    shipped = report_to_result(report, "out").shipped
    assert (shipped.file, shipped.path, shipped.uri) == ("student.pt2", "out/student.pt2", "")
    assert (shipped.sha256, shipped.bytes) == ("ef" * 32, 77)


def test_a_stage_no_rule_judges_is_not_judged_never_pass():
    report = job_report({"student": GOOD}, GuardrailSpec(max_drop_vs_student=None))
    (stage,) = report_to_result(report).stages
    assert stage.verdict == compress_pb2.VERDICT_NOT_JUDGED


def _record(report_json: str) -> JobRecord:
    return JobRecord(seq=1, id="j1", request_id=None, name="job", state=JobState.REJECTED,
                     stage="package", spec={"name": "job"}, output_dir="/srv/j1", created=1.0,
                     updated=2.0, error="", error_kind="", attempts=1, cancel_requested=False,
                     token_hash="", worker="", report_json=report_json, last_sequence=0)


def test_get_job_carries_the_result_and_list_jobs_does_not():
    report = job_report({"student": FAILING}, POLICY)
    full = job_to_proto(_record(report.to_json()))
    assert full.HasField("result") and full.result.stages[0].failing_subgroups[0].name == "shirt"
    assert full.result == report_to_result(report, "/srv/j1")
    assert not job_to_proto(_record(report.to_json()), full=False).HasField("result")


def test_an_unreadable_report_leaves_the_result_unset(caplog):
    assert result_of("j1", '{"schema_version": 2}', "") is None
    assert "unreadable report" in caplog.text
    message = job_to_proto(_record('{"not": "a report"}'))
    assert not message.HasField("result") and message.report_json


def test_the_result_in_words_says_what_ships_and_what_blocks():
    files = {"student.pt2": FileRecord("ef" * 32, 77)}
    shipped = describe_result(report_to_result(
        job_report({"student": GOOD}, POLICY, ship=("student",), files=files), "out"))
    assert shipped.splitlines() == [
        "result: SUCCEEDED, deployable", f"ships: student student.pt2 (sha256 {'ef' * 32}, "
        "77 bytes)", "  at: out/student.pt2",
        "  input: float32 [batch, 1, 4, 4] NCHW gray, values in [0, 1]", "  student: PASS"]
    rejected = describe_result(report_to_result(job_report({"student": FAILING}, POLICY)))
    assert rejected.splitlines() == ["result: REJECTED, not deployable",
                                     "  student: FAIL (blocked by shirt)"]


def test_a_stated_input_contract_is_carried_field_by_field():
    stated = {"dtype": "uint8", "shape": ["batch", 3, 64, 64], "layout": "NCHW",
              "channel_order": "bgr", "value_range": [0, 255],
              "model_input_shape": ["batch", 3, 56, 56],
              "preprocess": {"center_crop": 56, "mean": [0.5, 0.5, 0.5], "std": None}}
    report = job_report({"student": GOOD}, POLICY, ship=("student",), input_contract=stated)
    contract = report_to_result(report).shipped.input_contract
    assert (contract.dtype, list(contract.shape), contract.channel_order) == (
        "uint8", [3, 64, 64], "bgr")
    assert list(contract.value_range) == [0.0, 255.0]
    assert contract.preprocess["center_crop"] == 56 and contract.preprocess["std"] is None
    assert json.loads(contract.json) == stated
