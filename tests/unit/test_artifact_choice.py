"""The shipped artifact is the fastest that passed, by measured latency; how it is measured."""

from __future__ import annotations

import pytest
import torch

from compression.export.latency import Timing, choose_fastest, measure, timing_batch
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
