"""The TensorRT stage where TensorRT cannot run: the reason it gives, and the checks it makes
before it needs TensorRT. Engine builds themselves are in tests/gpu/test_tensorrt.py."""

import sys
import types

import pytest
import torch

from compression.data.dataset import Split
from compression.errors import InvalidInput, StageFailed
from compression.export import (TrtEngine, build_engine, calibration_set, export_onnx,
                                fingerprint_path, quantize_int8, tensorrt_available)
from compression.models import build_model

SHAPE = (1, 12, 12)


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` fail


def test_reason_when_tensorrt_is_missing(no_tensorrt):
    ok, reason = tensorrt_available()
    assert not ok
    assert reason.startswith("TensorRT is not installed") and "'trt' extra" in reason


def test_reason_when_tensorrt_is_too_old_or_has_no_gpu(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="8.6.1"))
    assert tensorrt_available() == (
        False, "TensorRT 8.6.1 is too old; engines need TensorRT 10 or newer")
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert tensorrt_available() == (
        False, "TensorRT 10.3.0 is installed but torch sees no CUDA GPU")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An FP32 ONNX model and its two INT8 QDQ variants (cpu: asymmetric, tensorrt)."""
    folder = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    fp32 = export_onnx(build_model("tiny_cnn", 1, 10), SHAPE, folder / "m.onnx", opset=17,
                       max_batch=8)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, *SHAPE), dtype=torch.uint8, generator=g)
    calib, _ = calibration_set(Split(x, x[:, 0, 0, 0].long() % 2, x[:, 0, 0, 0].long() % 2), 8)
    return {"fp32": fp32,
            "cpu": quantize_int8(fp32, folder / "cpu.onnx", calib, target="cpu"),
            "tensorrt": quantize_int8(fp32, folder / "trt.onnx", calib, target="tensorrt")}


def test_build_engine_reports_the_unavailability_reason(no_tensorrt, models, tmp_path):
    with pytest.raises(StageFailed) as info:
        build_engine(models["fp32"], tmp_path / "m.plan", "fp16", input_shape=SHAPE)
    assert info.value.stage == "build_engine"
    assert info.value.reason == tensorrt_available()[1]
    with pytest.raises(StageFailed, match="TensorRT is not installed"):
        TrtEngine(tmp_path / "m.plan")
    assert not list(tmp_path.iterdir())


def test_build_engine_checks_its_arguments_first(models, tmp_path):
    with pytest.raises(InvalidInput) as info:
        build_engine(tmp_path / "missing.onnx", tmp_path / "m.plan", "bf16",
                     input_shape=(12, 12), min_batch=8, opt_batch=4, max_batch=16)
    assert len(info.value.problems) == 4
    assert "missing.onnx does not exist" in str(info.value)


def test_int8_engine_needs_a_symmetric_qdq_model(no_tensorrt, models, tmp_path):
    with pytest.raises(StageFailed, match="has no QuantizeLinear"):
        build_engine(models["fp32"], tmp_path / "m.plan", "int8", input_shape=SHAPE)
    with pytest.raises(StageFailed, match="target='tensorrt'"):
        build_engine(models["cpu"], tmp_path / "m.plan", "int8", input_shape=SHAPE)
    # the symmetric model passes that check and stops only at TensorRT itself
    with pytest.raises(StageFailed, match="TensorRT is not installed"):
        build_engine(models["tensorrt"], tmp_path / "m.plan", "int8", input_shape=SHAPE)


def test_fingerprint_sits_beside_the_engine(tmp_path):
    assert fingerprint_path(tmp_path / "student.fp16.plan") == tmp_path / "student.fp16.plan.json"
