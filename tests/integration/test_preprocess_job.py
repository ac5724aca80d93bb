"""A job with data.preprocess (resize, crop, BGR, mean/std) end to end: the served ONNX and
INT8 artifacts take raw uint8 images and agree with the PyTorch student on them; the Triton
config, the model card and the report declare the contract; a teacher for other inputs is
refused before training."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from compression.data.preprocess import PreprocessSpec, preprocess_batch
from compression.errors import InvalidInput
from compression.models import build_model, save_exported
from compression.pipeline import run
from compression.spec import parse_spec

pytestmark = pytest.mark.integration

SHAPE = (3, 20, 24)  # as stored: what a client sends
PREPROCESS = {"resize": 18, "crop": 16, "channel_order": "bgr",
              "mean": [0.2, 0.3, 0.4], "std": [0.25, 0.2, 0.3]}


def _colour_bars(n: int, rng: np.random.Generator):
    """4 classes: class c lights a bar at row 4c + 2 in channel c % 3, on noise; NCHW."""
    y = np.arange(n) % 4
    x = rng.integers(0, 70, size=(n, *SHAPE))
    for c in range(4):
        x[y == c, c % 3, 4 * c + 2:4 * c + 4, :] += 170
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("preprocess")
    rng = np.random.default_rng(3)
    for name, n in (("train", 480), ("test", 160)):
        x, y = _colour_bars(n, rng)
        np.savez(d / f"{name}.npz", x=x, y=y, class_names=np.array(list("abcd")))
    torch.manual_seed(0)
    for side in (16, 20):  # a teacher for the preprocessed images, and one for stored ones
        teacher = build_model("tiny_cnn", 3, 4, 1.0, seed=1)
        save_exported(teacher, (3, side, side), d / f"teacher{side}.pt2")
    return d


def _job(d, teacher: str, **export):
    return parse_spec({
        "name": "pp", "output_dir": str(d / f"out-{teacher}"),
        "teacher": {"path": str(d / teacher)},
        "data": {"source": "npz", "path": str(d / "train.npz"), "test_path": str(d / "test.npz"),
                 "holdout_fraction": 0.25, "preprocess": PREPROCESS},
        "student": {"arch": "tiny_cnn"}, "mitigation": {"name": "kd", "alpha": 0.5},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 5},
        "guardrails": {"min_samples": 5, "block_on_insufficient_evidence": False,
                       "max_drop_vs_student": 0.5},
        "export": {"tensorrt": "off", "calibration_per_group": 16, **export}})


@pytest.fixture(scope="module")
def finished(data_dir):
    return run(_job(data_dir, "teacher16.pt2"))


def _student(out) -> torch.nn.Module:
    model = build_model("tiny_cnn", 3, 4, 1.0, seed=0)
    model.load_state_dict(load_file(out / "student.safetensors"))
    return model.eval()


def test_served_onnx_agrees_with_the_student_on_raw_uint8_images(finished, data_dir):
    out = finished.output_dir
    x = torch.from_numpy(np.load(data_dir / "test.npz")["x"][:64])  # [64, 3, 20, 24] uint8
    with torch.no_grad():
        expected = _student(out)(preprocess_batch(x, PreprocessSpec(
            18, 16, "bgr", tuple(PREPROCESS["mean"]), tuple(PREPROCESS["std"]))))
    served = ort.InferenceSession(str(out / "model.onnx"))
    (inp,) = served.get_inputs()
    assert inp.type == "tensor(uint8)" and inp.shape[1:] == list(SHAPE)
    logits = served.run(None, {inp.name: x.numpy()})[0]
    assert np.abs(logits - expected.numpy()).max() < 1e-4
    assert (logits.argmax(1) == expected.argmax(1).numpy()).all()
    int8 = ort.InferenceSession(str(out / "model.int8.onnx"))
    agree = (int8.run(None, {inp.name: x.numpy()})[0].argmax(1) == logits.argmax(1)).mean()
    assert agree >= 0.9


def test_int8_keeps_the_preprocessing_in_float(finished):
    graph = onnx.load(str(finished.output_dir / "model.int8.onnx")).graph
    made_by = {o: n for n in graph.node for o in n.output}
    resize = next(n for n in graph.node if n.op_type == "Resize")
    assert made_by[resize.input[0]].op_type == "Div"  # pixels / 255, not a DequantizeLinear
    first_quant = next(n for n in graph.node if n.op_type == "QuantizeLinear")
    assert made_by[first_quant.input[0]].op_type == "Div"  # after (x - mean) / std


def test_report_triton_and_card_declare_the_contract(finished):
    out = finished.output_dir
    report = json.loads(finished.report_path.read_text())
    contract = report["input_contract"]
    assert contract["dtype"] == "uint8" and contract["shape"] == ["batch", *SHAPE]
    assert contract["model_input_shape"] == ["batch", 3, 16, 16]
    assert contract["preprocess"]["mean"] == PREPROCESS["mean"]
    assert report["exports"]["onnx"]["parity_vs_pytorch"]["max_abs_diff"] < 1e-4
    config = next(out.glob("triton/*/config.pbtxt")).read_text()
    assert "data_type: TYPE_UINT8" in config and "dims: [ 3, 20, 24 ]" in config
    assert "format: FORMAT_NCHW" in config and '"input_channel_order"' in config
    card = (out / "model_card.md").read_text()
    assert "uint8 [batch, 3, 20, 24]" in card and "mean [0.2, 0.3, 0.4]" in card


def test_a_teacher_for_other_inputs_is_refused_naming_both_shapes(data_dir):
    with pytest.raises(InvalidInput) as err:
        run(_job(data_dir, "teacher20.pt2"))
    text = str(err.value)
    assert "[2, 3, 16, 16]" in text and "x.size()[2] == 20" in text
    assert "float32 [B, 3, 16, 16]" in text and "[B, 3, 20, 24]" in text
