"""Teacher preflight: one batch of the data, as preprocessed, against what the teacher takes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compression.data.preprocess import PreprocessSpec
from compression.errors import ErrorKind, InvalidInput
from compression.export.onnx_export import export_onnx
from compression.models import build_model
from compression.models.onnx_runner import OnnxRunner
from compression.models.teacher import Teacher
from compression.pipeline.teacher import declared_input, preflight_teacher

CROP = PreprocessSpec(resize=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def _pixels(shape=(3, 20, 24), n=4):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def _exported(example: torch.Tensor, model: nn.Module | None = None) -> Teacher:
    model = (model or build_model("tiny_cnn", 3, 4, 1.0, seed=0)).eval()
    batch = torch.export.Dim("batch", min=1)
    module = torch.export.export(model, (example,), dynamic_shapes=({0: batch},)).module()
    return Teacher(module, format="export", path="teacher.pt2", sha256="",
                   device=torch.device("cpu"), module=module)


class _Pixels(nn.Module):
    """A classifier for uint8 images: what a teacher exported for raw pixels declares."""

    def __init__(self):
        super().__init__()
        self.net = build_model("tiny_cnn", 3, 4, 1.0, seed=0)

    def forward(self, x):
        return self.net(x.float() / 255)


@pytest.fixture(scope="module")
def exported():
    return _exported(torch.zeros(2, 3, 16, 16))


def test_an_exported_teacher_declares_its_input(exported):
    assert declared_input(exported) == ("float32", ["B", 3, 16, 16])
    assert declared_input(Teacher(nn.Flatten(), format="weights", path="w", sha256="",
                                  device=torch.device("cpu"))) is None


def test_a_teacher_that_fits_the_preprocessed_data_passes(exported):
    preflight_teacher(exported, _pixels(), CROP, 4)


def test_a_size_mismatch_names_both_shapes(exported):
    with pytest.raises(InvalidInput) as err:
        preflight_teacher(exported, _pixels(), PreprocessSpec(), 4)
    assert err.value.kind is ErrorKind.INVALID_INPUT
    assert ("teacher teacher.pt2 takes float32 [B, 3, 16, 16] but the data, as preprocessed, "
            "is float32 [B, 3, 20, 24]") in str(err.value)


def test_a_dtype_mismatch_names_both_dtypes():
    teacher = _exported(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), _Pixels())
    with pytest.raises(InvalidInput, match=r"takes uint8 \[B, 3, 16, 16\] but the data, as "
                                           r"preprocessed, is float32 \[B, 3, 16, 16\]"):
        preflight_teacher(teacher, _pixels(), CROP, 4)


def test_an_onnx_teacher_is_read_for_its_declared_input(tmp_path):
    path = export_onnx(build_model("tiny_cnn", 3, 4, 1.0, seed=0), (3, 16, 16),
                       tmp_path / "t.onnx")
    runner = OnnxRunner(path, (3, 16, 16), torch.device("cpu"))
    teacher = Teacher(runner, format="onnx", path=str(path), sha256="",
                      device=torch.device("cpu"))
    assert declared_input(teacher) == ("float32", ["B", 3, 16, 16])
    preflight_teacher(teacher, _pixels(), CROP, 4)


def test_an_undeclared_teacher_that_fails_on_the_batch_names_the_data():
    gray = Teacher(build_model("tiny_cnn", 1, 4, 1.0, seed=0).eval(), format="weights",
                   path="w.safetensors", sha256="", device=torch.device("cpu"))
    with pytest.raises(InvalidInput, match=r"\(an undeclared input\) fails on one batch of the "
                                           r"data as preprocessed, float32 \[B, 3, 16, 16\]"):
        preflight_teacher(gray, _pixels(), CROP, 4)


def test_a_teacher_for_other_classes_is_refused(exported):
    with pytest.raises(InvalidInput, match=r"returns \[4, 4\] .* expected finite logits \[4, 10\]"):
        preflight_teacher(exported, _pixels(), CROP, 10)
