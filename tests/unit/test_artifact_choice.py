"""The shipped artifact is the fastest that passed, by measured latency; how it is measured."""

from __future__ import annotations

import pytest
import torch

from compression.export.latency import Timing, choose_fastest, measure, measure_all, timing_batch
from compression.guardrails import FAIL, PASS, Check, StageVerdict


def _verdict(stage: str, passed: bool) -> StageVerdict:
    check = Check(rule="min_accuracy", subgroup="a", value=0.9, floor=0.5, ci=(0.8, 0.95),
                  n=100, verdict=PASS if passed else FAIL, message="")
    return StageVerdict(stage, (check,), ())


def test_the_fastest_passed_stage_ships_whatever_its_kind():
    verdicts = [_verdict("onnx", True), _verdict("int8", True), _verdict("int8_mixed", True)]
    # INT8 slower than FP32 (a small model in onnxruntime): FP32 ships
    assert choose_fastest(verdicts, {"onnx": 2.0, "int8": 2.9, "int8_mixed": 2.5}) == "onnx"
    assert choose_fastest(verdicts, {"onnx": 2.0, "int8": 1.4, "int8_mixed": 1.6}) == "int8"
    assert choose_fastest(verdicts, {"onnx": 2.0, "int8": 1.4, "int8_mixed": 1.2}) == (
        "int8_mixed")


def test_a_stage_that_did_not_pass_never_ships_however_fast():
    verdicts = [_verdict("onnx", True), _verdict("int8", False), _verdict("int8_mixed", True)]
    assert choose_fastest(verdicts, {"onnx": 2.0, "int8": 0.5, "int8_mixed": 1.5}) == (
        "int8_mixed")
    assert choose_fastest(verdicts[:2], {"onnx": 2.0, "int8": 0.5}) == "onnx"
    assert choose_fastest([_verdict("int8", False)], {"int8": 0.5}) is None


def test_unmeasured_stages_are_not_candidates_and_ties_go_to_the_smaller_file():
    verdicts = [_verdict("onnx", True), _verdict("int8", True)]
    assert choose_fastest(verdicts, {"int8": 3.0}) == "int8"
    assert choose_fastest(verdicts, {}) is None
    equal = {"onnx": 1.0, "int8": 1.0}
    assert choose_fastest(verdicts, equal, {"onnx": 4000, "int8": 1000}) == "int8"
    assert choose_fastest(verdicts, equal) == "onnx"  # then the stage judged first


def test_measure_warms_up_then_takes_the_median_of_the_timed_calls():
    calls = []
    ticks = iter([0.0, 0.003, 1.0, 1.001, 2.0, 2.010])  # 3 ms, 1 ms, 10 ms

    def model(x):
        calls.append(len(x))

    timing = measure(model, torch.zeros(4, 1, 2, 2), warmup=2, repeats=3,
                     clock=lambda: next(ticks))
    assert len(calls) == 5 and calls == [4] * 5
    assert timing == Timing(batch=4, warmup=2, repeats=3, median_ms=pytest.approx(3.0),
                            max_ms=pytest.approx(10.0))
    with pytest.raises(ValueError):
        measure(model, torch.zeros(1, 1, 2, 2), warmup=0, repeats=0)


def test_the_timing_batch_is_real_images_cycled_to_the_batch_size():
    x = torch.tensor([0, 255, 51], dtype=torch.uint8).view(3, 1, 1, 1)
    batch = timing_batch(x, 5)
    assert batch.dtype == torch.float32 and batch.shape == (5, 1, 1, 1)
    assert batch.flatten().tolist() == pytest.approx([0.0, 1.0, 0.2, 0.0, 1.0])


def test_the_pipeline_ships_the_fastest_passed_artifact_and_reports_every_size(tmp_path):
    from types import SimpleNamespace

    from compression.pipeline.exports import BUILT, Artifact, fastest_passed, shipping_sections
    from compression.spec import ExportSpec
    files = {}
    for stage, size in (("onnx", 4000), ("int8", 1500), ("int8_mixed", 1800)):
        files[stage] = tmp_path / f"{stage}.onnx"
        files[stage].write_bytes(b"x" * size)
    measured = {"onnx": 2.0, "int8": 0.9, "int8_mixed": 1.3}  # injected, not timed here
    artifacts = [Artifact(stage, BUILT, files[stage], verdict=_verdict(stage, stage != "int8"),
                          timing=Timing(32, 5, 20, ms, ms * 1.5))
                 for stage, ms in measured.items()]
    assert fastest_passed(artifacts) == "int8_mixed"  # int8 is faster but broke a floor
    job = SimpleNamespace(spec=SimpleNamespace(export=ExportSpec()), device="cpu")
    sections = shipping_sections(job, artifacts)
    choice = sections["artifact_choice"]
    assert sections["mixed_precision"] is None  # no search ran
    assert {k: (t.bytes, t.median_ms, t.passed) for k, t in choice.artifacts.items()} == {
        "onnx": (4000, 2.0, True), "int8": (1500, 0.9, False), "int8_mixed": (1800, 1.3, True)}
    assert (choice.batch, choice.warmup, choice.repeats) == (32, 5, 20)


def test_the_sizes_latencies_and_search_survive_report_json_and_reach_the_card():
    from compression.artifacts import render_model_card
    from compression.report import JobReport
    from compression.report_sections import ArtifactChoice, ArtifactTiming, MixedPrecisionSummary
    from compression.spec import GuardrailSpec
    from tests.reports import eval_report, job_report
    stages = {"onnx": eval_report("onnx", a=(90, 100), b=(40, 50)),
              "int8": eval_report("int8", a=(90, 100), b=(10, 50)),
              "int8_mixed": eval_report("int8_mixed", a=(90, 100), b=(40, 50))}
    choice = ArtifactChoice(32, 5, 20, "x86_64 with 2 CPUs", {
        "onnx": ArtifactTiming(4000, 2.0, 2.5, True), "int8": ArtifactTiming(1500, 0.9, 1.0, False),
        "int8_mixed": ArtifactTiming(1800, 1.3, 1.4, True)})
    candidate = {"float_nodes": ["/conv1/Conv"], "passed": True,
                 "verdicts": {"a": "PASS", "b": "PASS"}, "failing_subgroups": [],
                 "latency_ms": 1.3}
    mixed = MixedPrecisionSummary(
        "found", "1 node(s) kept in float", ("b",), 50, ("/conv1/Conv",),
        ({"node": "/conv1/Conv", "op_type": "Conv", "flip_rate": 0.4, "logit_error": 0.2},),
        (candidate,), 12.5, 24, 600.0)
    report = job_report(stages, GuardrailSpec(min_accuracy=0.5), ship=("int8_mixed",),
                        artifact_choice=choice, mixed_precision=mixed)
    back = JobReport.from_dict(report.to_dict())
    assert back.artifact_choice == choice and back.mixed_precision == mixed
    broken = report.to_dict()
    broken["mixed_precision"]["candidates"][0].pop("latency_ms")
    with pytest.raises(Exception, match="latency_ms"):
        JobReport.from_dict(broken)
    card = render_model_card(report, shipped_file="model.int8.mixed.onnx", triton_dir=None)
    assert "| int8_mixed (shipped) | 1.8 | 1.300 | 1.400 | passed |" in card
    assert "| int8 | 1.5 | 0.900 | 1.000 | blocked |" in card
    assert "Kept in float: `/conv1/Conv`" in card and "INT8 did not pass on b" in card


def test_measure_all_interleaves_the_models_in_rounds():
    order = []
    now = [0.0]
    cost = {"a": 0.002, "b": 0.001}  # seconds per call, seen through an injected clock

    def model(name):
        def call(x):
            order.append(name)
            now[0] += cost[name]
        return call

    timings = measure_all({"a": model("a"), "b": model("b")}, torch.zeros(2, 1, 1, 1),
                          warmup=1, repeats=4, rounds=2, clock=lambda: now[0])
    assert order == ["a", "b", "a", "a", "b", "b", "a", "a", "b", "b"]
    assert timings["a"].median_ms == pytest.approx(2.0)
    assert timings["b"] == Timing(2, 1, 4, pytest.approx(1.0), pytest.approx(1.0))
