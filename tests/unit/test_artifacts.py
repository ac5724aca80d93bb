import dataclasses
import hashlib
import json
import shutil
import struct
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from torch import nn

from compression.artifacts import chart_series, choose_shipped, onnx_io, write_bundle
from compression.errors import InvalidInput
from compression.evaluation import load_json
from compression.guardrails import judge
from compression.report import NOT_JUDGED, JobReport, group_label
from compression.spec import ExportSpec, GuardrailSpec
from tests import reports
from tests.reports import eval_report, job_report, paired_reports

POLICY = GuardrailSpec(min_accuracy=0.7)
SPEC = dataclasses.replace(reports.SPEC, export=ExportSpec(max_batch=64), guardrails=POLICY)


def _export(path, dynamic=True):
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(32, 3)).eval()
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but 40x faster
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(2, 1, 4, 4),), str(path), input_names=["images"],
                          output_names=["logits"], dynamic_axes=axes, dynamo=False)
    return path


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("onnx") / "student.onnx")


GOOD = eval_report("onnx", shirt=(45, 50), trouser=(48, 50), bag=(46, 50))
BAD = eval_report("onnx", shirt=(20, 50), trouser=(48, 50), bag=(46, 50))  # shirt 0.4 < 0.7
TEACHER = eval_report("teacher", shirt=(47, 50), trouser=(49, 50), bag=(48, 50))


def _job(stages, ship=("onnx",), policy=POLICY, **sections):
    report = job_report(stages, policy, references={"teacher": TEACHER}, ship=ship,
                        student_parameters=147, **sections)
    return report.with_sections(spec=dataclasses.replace(SPEC, guardrails=policy))


def _bundle(out, onnx_model, stage_report, ship=("onnx",), extra=None):
    out.mkdir(exist_ok=True)
    shutil.copyfile(onnx_model, out / "student.onnx")
    files = {"onnx": out / "student.onnx", **(extra or {})}
    return write_bundle(out, _job({"onnx": stage_report}, ship), files)


def _model_config_class():
    """Triton's ModelConfig, the fields we write (names and types as in model_config.proto)."""
    T = descriptor_pb2.FieldDescriptorProto
    f = descriptor_pb2.FileDescriptorProto(name="mc.proto", package="inference", syntax="proto3")
    types = ["INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP16", "FP32", "FP64", "STRING", "BF16"]
    enum = f.enum_type.add(name="DataType")
    for i, t in enumerate(types):
        enum.value.add(name=f"TYPE_{t}", number=i)

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for number, (fname, ftype, label, type_name) in enumerate(fields, 1):
            m.field.add(name=fname, number=number, type=ftype, label=label, type_name=type_name)

    opt, rep = T.LABEL_OPTIONAL, T.LABEL_REPEATED
    tensor = [("name", T.TYPE_STRING, opt, None),
              ("data_type", T.TYPE_ENUM, opt, ".inference.DataType"),
              ("dims", T.TYPE_INT64, rep, None)]
    message("ModelInput", *tensor)
    message("ModelOutput", *tensor, ("label_filename", T.TYPE_STRING, opt, None))
    message("ModelDynamicBatching")
    message("ModelConfig", ("name", T.TYPE_STRING, opt, None),
            ("platform", T.TYPE_STRING, opt, None), ("max_batch_size", T.TYPE_INT32, opt, None),
            ("input", T.TYPE_MESSAGE, rep, ".inference.ModelInput"),
            ("output", T.TYPE_MESSAGE, rep, ".inference.ModelOutput"),
            ("dynamic_batching", T.TYPE_MESSAGE, opt, ".inference.ModelDynamicBatching"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def _parse_config(path):
    config = _model_config_class()()
    text_format.Parse(path.read_text(), config)  # strict: unknown fields or bad syntax raise
    return config


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_onnx_io_reads_names_types_and_dims_without_the_batch_axis(onnx_model, tmp_path):
    inputs, outputs = onnx_io(onnx_model)
    assert [(t.name, t.data_type, t.dims) for t in inputs] == [("images", "TYPE_FP32", (1, 4, 4))]
    assert [(t.name, t.data_type, t.dims) for t in outputs] == [("logits", "TYPE_FP32", (3,))]
    with pytest.raises(InvalidInput, match="dynamic batch"):
        onnx_io(_export(tmp_path / "fixed.onnx", dynamic=False))
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InvalidInput, match="junk.onnx"):
        onnx_io(tmp_path / "junk.onnx")


def test_deployable_bundle_has_triton_layout_card_chart_and_hashes(onnx_model, tmp_path):
    out = tmp_path / "job"
    report = _bundle(out, onnx_model, GOOD)
    assert report.deployable is True and report.shipped == "onnx"
    assert JobReport.load(out / "report.json") == report
    assert load_json(out / "report.json") == report.to_dict()
    folder = out / "triton" / "fmnist-kd"
    config = _parse_config(folder / "config.pbtxt")
    assert (config.name, config.platform, config.max_batch_size) == (
        "fmnist-kd", "onnxruntime_onnx", 64)
    assert [(i.name, list(i.dims)) for i in config.input] == [("images", [1, 4, 4])]
    assert [(o.name, list(o.dims), o.label_filename) for o in config.output] == [
        ("logits", [3], "labels.txt")]
    assert config.input[0].data_type == 11 and config.HasField("dynamic_batching")  # TYPE_FP32
    assert (folder / "labels.txt").read_text() == "shirt\ntrouser\nbag\n"
    served = ort.InferenceSession(str(folder / "1" / "model.onnx"))
    assert served.run(None, {"images": np.zeros((5, 1, 4, 4), np.float32)})[0].shape == (5, 3)
    expected = {"student.onnx", "model_card.md", "guardrails.png", "triton/fmnist-kd/config.pbtxt",
                "triton/fmnist-kd/labels.txt", "triton/fmnist-kd/1/model.onnx"}
    assert set(report.files) == expected
    for rel, entry in report.files.items():
        data = (out / rel).read_bytes()
        assert (entry.sha256, entry.bytes) == (hashlib.sha256(data).hexdigest(), len(data))
    assert report.stages[0].passed is True
    assert report.guardrails.first_failing_stage is None
    assert set(report.evaluations) == {"teacher", "onnx"}


def test_model_card_and_chart_show_every_subgroup(onnx_model, tmp_path):
    out = tmp_path / "job"
    _bundle(out, onnx_model, GOOD)
    card = (out / "model_card.md").read_text()
    assert "**Status: SHIPPED.** `onnx` (`student.onnx`) ships" in card
    assert "`triton/fmnist-kd/`" in card
    assert "| shirt | 50 | 90.0% | 78.6% - 95.7% | 70.0% | PASS |" in card
    assert "### teacher (reference, not judged)" in card
    assert "## Intended use and limits" in card and "min_accuracy: every subgroup" in card
    width, height = _png_size(out / "guardrails.png")
    assert 600 <= width <= 2500 and 300 <= height <= 1200
    assert (out / "guardrails.png").stat().st_size > 10_000


def test_rejected_bundle_has_no_triton_folder_and_says_so(onnx_model, tmp_path):
    out = tmp_path / "job"
    _bundle(out, onnx_model, GOOD)
    assert (out / "triton").is_dir()
    report = _bundle(out, onnx_model, BAD)  # a later run of the same job is rejected
    assert not (out / "triton").exists()  # the stale repository is gone
    assert report.deployable is False and report.shipped is None
    assert not any(p.startswith("triton/") for p in report.files)
    assert report.guardrails.first_failing_stage == "onnx"
    assert "FAIL on 'shirt' (min_accuracy)" in report.guardrails.summary
    card = (out / "model_card.md").read_text()
    assert "**Status: REJECTED.** Nothing ships" in card
    assert "no Triton model repository was written" in card
    assert "- onnx: FAIL on shirt" in card
    assert "- onnx: FAIL: min_accuracy on 'shirt': accuracy 40.0% (20/50)" in card
    assert json.loads((out / "report.json").read_text())["deployable"] is False


def test_the_card_explains_each_check_with_its_test_figures(tmp_path):
    # a paired drop rule: the one-hot student vs the candidate on the same 100 examples
    one_hot, student = paired_reports(head=(80, 10, 2, 100), tail=(85, 3, 3, 100))
    policy = GuardrailSpec(max_drop_vs_one_hot=0.03)
    report = job_report({"student": dataclasses.replace(student, name="student")}, policy,
                        references={"one_hot": one_hot}, refs_student={"one_hot": one_hot})
    write_bundle(tmp_path, report, {})
    card = (tmp_path / "model_card.md").read_text()
    head = next(c for c in report.stages[0].checks if c.subgroup == "head")
    assert (head.b, head.c, head.method) == (10, 2, "tango_score")
    # drop 8 pp against a 3 pp margin: the p-value against the Holm threshold of 2 checks
    row = next(line for line in card.splitlines() if line.startswith("| max_drop_vs_one_hot | head"))
    assert f"| {head.verdict}" in row or f"**{head.verdict}**" in row
    assert "| tango_score | 8.0 pp | 3.0 pp |" in row and "| 10 / 2 |" in row
    assert f"| {head.p_value:.3g} | {head.threshold:.3g} |" in row
    assert row.endswith(f"| {100 * head.mde:.1f} pp |")
    assert "2 checks at 95.0% one-sided confidence; FAIL thresholds by holm over a family " \
        "of 2" in card
    assert "paired score test" in card and "b counts the examples" in card


def test_no_rule_and_unjudged_subgroups_are_not_judged_never_pass(tmp_path):
    # no rule at all: the stage ships unjudged, and every view says NOT JUDGED
    report = job_report({"student": GOOD}, GuardrailSpec(max_drop_vs_student=None),
                        ship=("student",))
    out = tmp_path / "none"
    out.mkdir()
    (out / "student.pt2").write_bytes(b"exported program")
    write_bundle(out, report, {"student": out / "student.pt2"})
    card = (out / "model_card.md").read_text()
    assert "ships: NOT JUDGED: no guardrail rule applies" in card
    assert "| student | 92.7% | 87.3% - 95.9% | NOT JUDGED (passed) |" in card
    assert "| shirt | 50 | 90.0% | 78.6% - 95.7% | - | NOT JUDGED |" in card
    assert "| PASS |" not in card and "no guardrail rule is set: nothing is judged" in card
    # one subgroup judged: the others are NOT JUDGED in the card and on the chart
    policy = GuardrailSpec(min_accuracy_by_group={"shirt": 0.7})
    report = job_report({"student": GOOD}, policy, references={"teacher": TEACHER})
    write_bundle(tmp_path / "one", report, {})
    card = (tmp_path / "one" / "model_card.md").read_text()
    assert "| shirt | 50 | 90.0% | 78.6% - 95.7% | 70.0% | PASS |" in card
    assert "| bag | 50 | 92.0% | 81.2% - 96.8% | - | NOT JUDGED |" in card
    series = dict(chart_series(report))
    assert [p[4] for p in series["student"]] == ["PASS", NOT_JUDGED, NOT_JUDGED]
    assert [p[4] for p in series["teacher"]] == ["reference"] * 3


def test_the_chart_draws_the_verdicts_the_report_gives(onnx_model, tmp_path):
    policy = GuardrailSpec(min_accuracy=0.7, min_samples=60)  # n = 50: never PASS
    report = job_report({"onnx": BAD}, policy, references={"teacher": TEACHER})
    series = dict(chart_series(report))
    drawn = [p[4] for p in series["onnx"]]
    assert drawn == [group_label(g) for g in report.stages[0].groups]
    assert drawn == ["FAIL", "INSUFFICIENT_EVIDENCE", "INSUFFICIENT_EVIDENCE"]
    assert [p[3] for p in series["onnx"]] == [0.7] * 3  # the floors


def test_nothing_chosen_is_rejected_even_when_every_stage_passed(onnx_model, tmp_path):
    report = _bundle(tmp_path / "job", onnx_model, GOOD, ship=())
    assert report.deployable is False and not (tmp_path / "job" / "triton").exists()
    assert report.status == "REJECTED"


def test_tensorrt_plan_ships_with_names_from_its_onnx_model(onnx_model, tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    (out / "student.plan").write_bytes(b"serialized engine")
    shutil.copyfile(onnx_model, out / "student.onnx")
    report = _job({"onnx": GOOD, "tensorrt": dataclasses.replace(GOOD, name="tensorrt")},
                  ship=("tensorrt",))
    report = write_bundle(out, report, {"onnx": out / "student.onnx",
                                        "tensorrt": out / "student.plan"}, model_name="fmnist")
    config = _parse_config(out / "triton" / "fmnist" / "config.pbtxt")
    assert (config.platform, config.input[0].name, list(config.output[0].dims)) == (
        "tensorrt_plan", "images", [3])
    assert (out / "triton" / "fmnist" / "1" / "model.plan").read_bytes() == b"serialized engine"
    assert report.shipped == "tensorrt"


def test_bad_calls_are_refused(onnx_model, tmp_path):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(onnx_model, outside)
    with pytest.raises(ValueError, match="not a file inside"):
        _bundle(tmp_path / "job", onnx_model, GOOD, extra={"int8": outside})
    report = _job({"onnx": GOOD, "int8": dataclasses.replace(GOOD, name="int8")}, ship=("int8",))
    with pytest.raises(ValueError, match="needs a file"):
        write_bundle(tmp_path / "job", report, {"onnx": tmp_path / "job" / "student.onnx"})
    with pytest.raises(ValueError, match="passed its guardrails"):
        _job({"onnx": BAD}).with_sections(shipped="onnx")


def test_choose_shipped_takes_the_first_preferred_stage_that_passed():
    verdicts = [judge(GOOD, POLICY, "onnx"), judge(BAD, POLICY, "int8")]
    assert choose_shipped(verdicts, ["tensorrt", "int8", "onnx"]) == "onnx"
    assert choose_shipped(verdicts, ["int8"]) is None


def test_a_passing_artifact_triton_cannot_serve_ships_without_a_triton_folder(tmp_path):
    out = tmp_path / "job"
    out.mkdir()
    (out / "student.pt2").write_bytes(b"exported program")
    report = write_bundle(out, _job({"student": GOOD}, ship=("student",)),
                          {"student": out / "student.pt2"})
    assert report.deployable is True and report.shipped == "student"
    assert not (out / "triton").exists()
    assert "No Triton model repository was written" in (out / "model_card.md").read_text()


def test_subgroups_at_exactly_0_and_100_percent_draw_and_report(onnx_model, tmp_path):
    edges = eval_report("onnx", shirt=(50, 50), trouser=(0, 50), bag=(20, 20))
    out = _bundle(tmp_path / "edges", onnx_model, edges)
    assert {"guardrails.png", "model_card.md"} <= set(out.files)
    assert "presentation_errors" not in out.to_dict()


def test_a_failing_chart_never_costs_the_report_its_verdicts(onnx_model, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("'yerr' must not contain negative values")

    monkeypatch.setattr("compression.artifacts.bundle.plot_guardrails", broken)
    out = _bundle(tmp_path / "b", onnx_model, BAD)
    written = JobReport.load(tmp_path / "b" / "report.json")
    assert written.guardrails.summary == out.guardrails.summary
    assert written.presentation_errors == {
        "guardrails.png": "ValueError: 'yerr' must not contain negative values"}
    assert "guardrails.png" not in written.files and "model_card.md" in written.files


def test_with_subgroup_shares_the_card_gives_accuracy_at_the_population_mix(tmp_path):
    # test split: shirt 45/50, trouser 48/50, bag 46/50; population 80% trouser, 10% each other
    # 0.1 * 0.9 + 0.8 * 0.96 + 0.1 * 0.92 = 0.95, variance 0.01 * 0.09 / 50
    # + 0.64 * 0.0384 / 50 + 0.01 * 0.0736 / 50 = 0.00052424
    shares = {"shirt": 0.1, "trouser": 0.8, "bag": 0.1}
    estimate, low, high = GOOD.accuracy_at(shares)
    half = 1.96 * 0.00052424 ** 0.5
    assert (estimate, low, high) == pytest.approx((0.95, 0.95 - half, 0.95 + half))
    assert GOOD.accuracy_at({**shares, "coat": 0.0}) == (estimate, low, high)  # share 0: unused
    assert GOOD.accuracy_at({"shirt": 0.5, "coat": 0.5}) is None  # no test example of coat
    report = _job({"onnx": GOOD}, ship=())  # the card without a bundle file
    data = dataclasses.replace(report.spec.data, subgroups=dataclasses.replace(
        report.spec.data.subgroups, shares=shares))
    write_bundle(tmp_path, report.with_sections(spec=dataclasses.replace(report.spec, data=data)),
                 {})
    card = (tmp_path / "model_card.md").read_text()
    assert "| stage | accuracy | 95% CI | at subgroup shares (95% CI) | guardrails |" in card
    assert f"| 95.0% ({100 * (0.95 - half):.1f}% - {100 * (0.95 + half):.1f}%) |" in card
    assert "shares of the population served: shirt 10.0%, trouser 80.0%, bag 10.0%" in card


def test_the_card_names_the_subgroups_a_reference_floor_left_below_its_reference(tmp_path):
    from compression.report_sections import TrainingSummary

    def card(floors, accuracy, multipliers, params):
        state = {"floors": {"overall": 0.8, "by_group": floors, "n": [100.0, 80.0, 0.0],
                            "holdout_half": 0},
                 "holdout_accuracy": accuracy, "floor_multipliers": multipliers}
        report = _job({"onnx": GOOD}, ship=(), training=TrainingSummary(
            18, 0, 0.5, 1000.0, 10.0, True, state),
            mitigation={"name": "paired_alpha", "params": params})
        write_bundle(tmp_path, report, {})
        return (tmp_path / "model_card.md").read_text()

    # shirt short at the default cap (8), trouser short below it; bag has no example to judge
    text = card([0.6, 0.9, 0.5], [0.55, 0.85, 0.0], [7.0, 1.5, 0.0], {"reference_floor": True})
    assert ("below the one-hot student on the holdout half it trained against: shirt 55.0% "
            "against 60.0% (n 100, weight 8.00, its cap); trouser 85.0% against 90.0% (n 80, "
            "weight 2.50)") in text
    assert "bag" not in text.split("Reference floor")[1].split("\n")[0]
    text = card([0.6, 0.9, 0.5], [0.6, 0.95, 0.0], [0.3, 0.0, 0.0], {"floor_max_weight": 2})
    assert "every subgroup ended at or above the one-hot student's accuracy" in text
    text = card([0.6, 0.9, 0.5], [0.5, 0.95, 0.0], [1.0, 0.0, 0.0], {"floor_max_weight": 2})
    assert "shirt 50.0% against 60.0% (n 100, weight 2.00, its cap)" in text
    write_bundle(tmp_path / "kd", _job({"onnx": GOOD}, ship=()), {})  # no floor: no line
    assert "Reference floor" not in (tmp_path / "kd" / "model_card.md").read_text()
