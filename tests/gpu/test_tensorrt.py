"""TensorRT engines: build (fp32, fp16, int8 from QDQ), timing cache, fingerprint, and runs.

Needs a CUDA GPU and TensorRT 10 (the 'trt' extra); skipped with the reason elsewhere.
"""

import json

import pytest
import torch

pytestmark = pytest.mark.gpu
trt = pytest.importorskip(
    "tensorrt", reason="TensorRT is not installed; GPU workers install it with the 'trt' extra")

from compression.data.dataset import Split  # noqa: E402
from compression.errors import StageFailed  # noqa: E402
from compression.export import (EngineInfo, OnnxModel, TrtEngine, build_engine,  # noqa: E402
                                calibration_set, export_onnx, fingerprint_path, parity,
                                quantize_int8, tensorrt_available)
from compression.models import build_model  # noqa: E402
from tests.synthetic import row_bars  # noqa: E402

SHAPE = (1, 12, 12)


def _synthetic(n: int, seed: int) -> Split:
    return row_bars(n, seed, SHAPE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny_cnn fitted to the synthetic task on the GPU, its FP32 ONNX and symmetric INT8."""
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 1, 10).cuda()
    data = _synthetic(512, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(80):
        idx = torch.arange(step * 64, step * 64 + 64) % len(data)
        x = data.x[idx].cuda().float() / 255
        loss = torch.nn.functional.cross_entropy(model(x), data.y[idx].cuda())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = _synthetic(300, seed=1)
    with torch.no_grad():
        hits = model(test.x.cuda().float() / 255).argmax(1).cpu() == test.y
    assert hits.float().mean() > 0.9  # learned: agreement figures below mean something
    folder = tmp_path_factory.mktemp("trt")
    fp32 = export_onnx(model, SHAPE, folder / "m.onnx", opset=17, max_batch=32)
    calib, _ = calibration_set(_synthetic(200, seed=2), 50)
    int8 = quantize_int8(fp32, folder / "m.int8.onnx", calib, target="tensorrt")
    return model, fp32, int8


def test_available_here():
    ok, reason = tensorrt_available()
    assert ok, reason
    assert trt.__version__ in reason


def test_fp32_engine_matches_onnx_at_every_batch_size(trained, tmp_path):
    _, fp32, _ = trained
    cache = tmp_path / "timing.cache"
    info = build_engine(fp32, tmp_path / "m.fp32.plan", "fp32", input_shape=SHAPE,
                        min_batch=1, opt_batch=8, max_batch=16, timing_cache_path=cache)
    assert info.tensorrt_version == trt.__version__
    assert info.gpu_name == torch.cuda.get_device_name()
    major, minor = torch.cuda.get_device_capability()
    assert info.compute_capability == f"{major}.{minor}"
    assert info.size_bytes == (tmp_path / "m.fp32.plan").stat().st_size > 0
    assert cache.stat().st_size > 0 and not info.timing_cache_loaded
    assert json.loads(fingerprint_path(tmp_path / "m.fp32.plan").read_text()) == info.to_dict()
    engine = TrtEngine(tmp_path / "m.fp32.plan")
    assert (engine.min_batch, engine.max_batch) == (1, 16)
    reference = OnnxModel(fp32)  # onnxruntime on the CPU: plain FP32, no TF32 anywhere
    for b in (1, 7, 40):  # 40: above max_batch, run in chunks
        x = torch.rand(b, *SHAPE, device="cuda")
        out = engine(x)
        assert out.shape == (b, 10) and out.device == x.device and out.dtype == torch.float32
        assert torch.allclose(out.cpu(), reference(x), atol=1e-3)
    assert engine(torch.rand(3, *SHAPE)).device.type == "cpu"  # CPU in, CPU out


def test_timing_cache_is_reused(trained, tmp_path):
    _, fp32, _ = trained
    cache = tmp_path / "timing.cache"
    kwargs = dict(input_shape=SHAPE, min_batch=1, opt_batch=4, max_batch=8,
                  timing_cache_path=cache)
    first = build_engine(fp32, tmp_path / "a.plan", "fp16", **kwargs)
    second = build_engine(fp32, tmp_path / "b.plan", "fp16", **kwargs)
    assert not first.timing_cache_loaded and second.timing_cache_loaded
    assert isinstance(second, EngineInfo) and second.precision == "fp16"


def test_fp16_engine_agrees_with_fp32_onnx(trained, tmp_path):
    _, fp32, _ = trained
    build_engine(fp32, tmp_path / "m.fp16.plan", "fp16", input_shape=SHAPE, max_batch=64)
    result = parity(OnnxModel(fp32), TrtEngine(tmp_path / "m.fp16.plan"), _synthetic(300, 1),
                    device="cuda")
    assert result.top1_agreement >= 0.99
    assert result.max_abs_diff < 0.1


def test_int8_engine_from_qdq_agrees_with_fp32(trained, tmp_path):
    _, fp32, int8 = trained
    info = build_engine(int8, tmp_path / "m.int8.plan", "int8", input_shape=SHAPE,
                        min_batch=2, opt_batch=8, max_batch=64)
    assert info.precision == "int8"
    engine = TrtEngine(tmp_path / "m.int8.plan")
    assert engine(torch.rand(1, *SHAPE, device="cuda")).shape == (1, 10)  # padded to min 2
    # the synthetic task has wide margins, so INT8 rounding should flip almost nothing
    result = parity(OnnxModel(fp32), engine, _synthetic(300, 1), device="cuda")
    assert result.top1_agreement >= 0.97


def test_engine_from_another_gpu_or_version_is_refused(trained, tmp_path):
    _, fp32, _ = trained
    plan = tmp_path / "m.plan"
    build_engine(fp32, plan, "fp32", input_shape=SHAPE, max_batch=8)
    meta = fingerprint_path(plan)
    info = json.loads(meta.read_text())
    meta.write_text(json.dumps({**info, "compute_capability": "1.0"}))
    with pytest.raises(StageFailed, match="rebuild the engine here"):
        TrtEngine(plan)
