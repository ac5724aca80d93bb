"""Checkpoint round trips: every saved format loads back as a teacher with the same logits."""

import hashlib

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from compression import access
from compression.errors import InvalidInput
from compression.models import (build_model, load_teacher, save_exported, save_weights,
                                sha256_file)
from compression.spec import TeacherSpec

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*torch.jit.trace:FutureWarning"),
    pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export"),
]

SHAPE = (1, 12, 12)  # small images keep export and inference fast
CLASSES = 5


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("resnet8", SHAPE[0], CLASSES)
    # non-trivial BN statistics, so eval-mode loading is tested, not just the init
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(8, *SHAPE))
    return model.eval()


@pytest.fixture(scope="module")
def inputs() -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {b: torch.rand(b, *SHAPE, generator=gen) for b in (1, 5)}


def _assert_same_logits(teacher, model, inputs, atol):
    for x in inputs.values():
        with torch.no_grad():
            want = model(x)
        got = teacher(x)
        assert got.shape == (x.shape[0], CLASSES)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, atol=atol, rtol=0)


def test_exported_round_trip(model, inputs, tmp_path):
    path = save_exported(model, SHAPE, tmp_path / "teacher.pt2")
    teacher = load_teacher(TeacherSpec(path=str(path)), SHAPE, CLASSES)
    assert teacher.format == "export" and teacher.path == str(path)
    assert teacher.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    _assert_same_logits(teacher, model, inputs, atol=1e-5)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_save_exported_leaves_the_callers_model_as_it_was(tmp_path):
    model = build_model("tiny_cnn", 1, 3).train()
    save_exported(model, (1, 8, 8), tmp_path / "m.pt2")
    assert model.training
    # the program was captured in eval mode: batch statistics do not leak between samples
    teacher = load_teacher(TeacherSpec(path=str(tmp_path / "m.pt2")), (1, 8, 8), 3)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(teacher(x)[:1], teacher(x[:1]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["teacher.safetensors", "sd.pth"])
def test_weights_round_trip(model, inputs, tmp_path, name):
    path = tmp_path / name
    if path.suffix == ".safetensors":
        save_weights(model, path)
    else:
        torch.save(model.state_dict(), path)
    teacher = load_teacher(TeacherSpec(path=str(path), arch="resnet8"), SHAPE, CLASSES)
    assert teacher.format == "weights"
    _assert_same_logits(teacher, model, inputs, atol=1e-5)


def test_state_dict_named_pt_is_detected_as_weights(model, inputs, tmp_path):
    path = tmp_path / "sd.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in
                                           model.state_dict().items()}}, path)
    teacher = load_teacher(TeacherSpec(path=str(path), arch="resnet8"), SHAPE, CLASSES)
    assert teacher.format == "weights"
    _assert_same_logits(teacher, model, inputs, atol=1e-5)


def test_torchscript_round_trip(model, inputs, tmp_path):
    path = tmp_path / "teacher.pt"
    torch.jit.trace(model, inputs[5]).save(str(path))
    with access.granted(access.InputAccess(allow_torchscript=True)):  # code: opted in
        teacher = load_teacher(TeacherSpec(path=str(path)), SHAPE, CLASSES)
    assert teacher.format == "torchscript"
    _assert_same_logits(teacher, model, inputs, atol=1e-5)


def test_onnx_round_trip_dynamic_batch(model, inputs, tmp_path):
    path = tmp_path / "teacher.onnx"
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(model, (inputs[5],), str(path), dynamo=True,
                      dynamic_shapes=({0: batch},), verbose=False)
    teacher = load_teacher(TeacherSpec(path=str(path)), SHAPE, CLASSES)
    assert teacher.format == "onnx"
    _assert_same_logits(teacher, model, inputs, atol=1e-4)


def test_onnx_with_a_fixed_batch_runs_in_chunks(model, inputs, tmp_path):
    # exports from other frameworks often fix the batch: 5 samples run as 3 padded chunks of 2
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(model, (inputs[5][:2],), str(path), dynamo=False, input_names=["image"])
    teacher = load_teacher(TeacherSpec(path=str(path), format="onnx"), SHAPE, CLASSES)
    _assert_same_logits(teacher, model, inputs, atol=1e-4)


def test_save_weights_keeps_every_key_of_tied_weights(tmp_path):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[1].weight = model[0].weight  # shared storage, which save_file alone refuses
    save_weights(model, tmp_path / "tied.safetensors")
    loaded = load_file(str(tmp_path / "tied.safetensors"))
    assert set(loaded) == {"0.weight", "0.bias", "1.weight", "1.bias"}
    torch.testing.assert_close(loaded["1.weight"], model[0].weight.detach())


def test_sha256_file(tmp_path):
    path = tmp_path / "abc.bin"
    path.write_bytes(b"abc")
    assert sha256_file(path) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    with pytest.raises(InvalidInput, match="missing.bin"):
        sha256_file(tmp_path / "missing.bin")
