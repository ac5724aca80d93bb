"""Subgroup-stratified calibration sets and static INT8 QDQ quantization."""

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from compression.data.dataset import Split
from compression.errors import InvalidInput, StageFailed
from compression.export import (CalibrationReader, OnnxModel, calibration_set, count_ops,
                                export_int8, export_onnx, parity, quantize_int8)
from compression.models import build_model
from tests.synthetic import row_bars

SHAPE = (1, 12, 12)


def _indexed_split(group_sizes: list[int]) -> Split:
    """Image i is filled with the value i, so a drawn image says which row it was."""
    group = torch.cat([torch.full((n,), g) for g, n in enumerate(group_sizes)])
    group = group[torch.randperm(len(group), generator=torch.Generator().manual_seed(1))]
    n = len(group)
    x = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, *SHAPE).contiguous()
    return Split(x, group.clone(), group)


def _rows(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].tolist()


def test_calibration_set_is_stratified_and_capped_by_availability():
    split = _indexed_split([5, 2, 10, 0])
    x, composition = calibration_set(split, per_group=4, seed=0,
                                     group_names=["head", "mid", "tail", "empty"])
    assert composition == {"head": 4, "mid": 2, "tail": 4, "empty": 0}
    assert x.shape == (10, *SHAPE) and x.dtype == torch.uint8
    rows = _rows(x)
    assert len(set(rows)) == 10  # without replacement
    drawn_groups = [int(split.group[r]) for r in rows]
    assert drawn_groups == [0] * 4 + [1] * 2 + [2] * 4  # groups in id order
    mid_rows = torch.nonzero(split.group == 1).flatten().tolist()
    assert sorted(rows[4:6]) == mid_rows  # a short group gives all it has


def test_calibration_set_is_deterministic_and_seeded_per_group():
    split = _indexed_split([20, 20, 20])
    a, _ = calibration_set(split, 5, seed=3)
    b, comp = calibration_set(split, 5, seed=3)
    assert torch.equal(a, b) and comp == {"0": 5, "1": 5, "2": 5}
    c, _ = calibration_set(split, 5, seed=4)
    assert not torch.equal(a, c)
    # group 0's draw depends on (seed, group) only: shrinking group 2 leaves it unchanged
    smaller = _indexed_split([20, 20, 20])
    keep = torch.nonzero(~((smaller.group == 2) & (torch.arange(60) % 2 == 0))).flatten()
    sub = Split(smaller.x[keep], smaller.y[keep], smaller.group[keep])
    d, _ = calibration_set(sub, 5, seed=3)
    assert _rows(d)[:5] == _rows(a)[:5]


def test_calibration_set_refuses_bad_input():
    with pytest.raises(InvalidInput, match="calibration_per_group is 0"):
        calibration_set(_indexed_split([3]), 0)
    empty = Split(torch.zeros(0, *SHAPE, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                  torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInput, match="holdout"):
        calibration_set(empty, 4, group_names=["a"])
    with pytest.raises(InvalidInput, match="group ids span"):
        calibration_set(_indexed_split([2, 2, 2]), 4, group_names=["a", "b"])


def test_calibration_reader_batches_floats_and_rewinds():
    x = torch.full((5, *SHAPE), 51, dtype=torch.uint8)
    reader = CalibrationReader(x, batch_size=2)
    sizes = []
    while (batch := reader.get_next()) is not None:
        assert batch["input"].dtype == np.float32
        assert np.allclose(batch["input"], 0.2)
        sizes.append(batch["input"].shape[0])
    assert sizes == [2, 2, 1]
    reader.rewind()
    assert reader.get_next()["input"].shape == (2, *SHAPE)


def _synthetic(n: int, seed: int) -> Split:
    return row_bars(n, seed, SHAPE)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny_cnn fitted to the synthetic task, and its FP32 ONNX export."""
    torch.manual_seed(0)
    model = build_model("tiny_cnn", 1, 10)
    data = _synthetic(512, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # convolutions this small run several times faster on one thread
    try:
        for step in range(60):
            idx = torch.arange(step * 64, step * 64 + 64) % len(data)
            x = data.x[idx].float() / 255
            loss = torch.nn.functional.cross_entropy(model(x), data.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = export_onnx(model, SHAPE, tmp_path_factory.mktemp("fp32") / "m.onnx", opset=17,
                       max_batch=64)
    return model, path


def test_int8_model_is_smaller_quantized_and_agrees_with_fp32(trained, tmp_path):
    model, fp32_path = trained
    test = _synthetic(400, seed=1)
    with torch.no_grad():
        accuracy = (model(test.x.float() / 255).argmax(1) == test.y).float().mean().item()
    assert accuracy > 0.9  # the model learned the task, so agreement below means something
    result = export_int8(fp32_path, tmp_path / "m.int8.onnx", _synthetic(300, seed=2),
                         per_group=40, seed=0, group_names=["even", "odd"])
    assert result.composition == {"even": 40, "odd": 40} and result.calibration_size == 80
    assert result.to_dict()["calibration_split"] == "holdout"
    onnx.checker.check_model(str(result.path), full_check=True)
    ops = count_ops(result.path)
    assert ops["QuantizeLinear"] >= 4 and ops["DequantizeLinear"] >= 4
    assert result.path.stat().st_size < 0.6 * fp32_path.stat().st_size
    graph = onnx.load(str(result.path)).graph
    producer = next(n for n in graph.node if "logits" in n.output)
    assert producer.op_type == "Gemm"  # logits stay float: not rounded by a Q/DQ pair
    int8 = OnnxModel(result.path)
    assert int8(torch.rand(7, *SHAPE)).shape == (7, 10)
    agreement = parity(OnnxModel(fp32_path), int8, test).top1_agreement
    assert agreement >= 0.95


def _zero_points(path) -> list[np.ndarray]:
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    return [inits[n.input[2]] for n in graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits]


def test_tensorrt_target_is_symmetric_int8(trained, tmp_path):
    _, fp32_path = trained
    x, _ = calibration_set(_synthetic(100, seed=3), 20)
    trt_path = quantize_int8(fp32_path, tmp_path / "trt.onnx", x, target="tensorrt")
    points = _zero_points(trt_path)
    assert points and all(p.dtype == np.int8 and not p.any() for p in points)
    cpu_path = quantize_int8(fp32_path, tmp_path / "cpu.onnx", x, target="cpu")
    cpu_points = _zero_points(cpu_path)
    assert cpu_points and all(p.dtype == np.uint8 for p in cpu_points)  # u8 x s8 kernels


def test_quantize_failures_are_reported(trained, tmp_path):
    _, fp32_path = trained
    x = torch.zeros(4, *SHAPE, dtype=torch.uint8)
    with pytest.raises(InvalidInput, match="target 'gpu'"):
        quantize_int8(fp32_path, tmp_path / "q.onnx", x, target="gpu")
    with pytest.raises(InvalidInput, match="at least one image"):
        quantize_int8(fp32_path, tmp_path / "q.onnx", x[:0])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(StageFailed) as info:
        quantize_int8(junk, tmp_path / "q.onnx", x)
    assert info.value.stage == "quantize" and "junk.onnx" in info.value.reason
    assert not (tmp_path / "q.onnx").exists() and not (tmp_path / "q.tmp.onnx").exists()
