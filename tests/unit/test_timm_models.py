"""timm architectures as ``timm/<name>``: built offline, seeded, checked at parse, exported."""

from __future__ import annotations

import socket

import numpy as np
import onnxruntime as ort
import pytest
import torch

from compression.errors import InvalidInput
from compression.export import export_onnx
from compression.models import build_model
from compression.models.timm_models import head_names
from compression.models.zoo import arch_problem
from compression.spec import parse_spec

SMALL = "timm/mobilenetv3_small_050"


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values()))


def test_a_timm_model_is_built_for_the_data_channels_and_classes():
    model = build_model("timm/mobilenetv3_small_100", 1, 7, seed=0).eval()
    assert model.conv_stem.in_channels == 1
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 7)
    assert head_names(model) == ("classifier",)
    assert model.classifier.out_features == 7


def test_the_seed_alone_decides_the_initial_weights():
    torch.manual_seed(123)  # the global state must not matter
    first = build_model(SMALL, 3, 5, seed=7)
    torch.manual_seed(456)
    again = build_model(SMALL, 3, 5, seed=7)
    other = build_model(SMALL, 3, 5, seed=8)
    assert _same(first, again)
    assert not _same(first, other)


def test_building_never_touches_the_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    model = build_model("timm/resnet18", 3, 4, seed=0)
    assert model.fc.out_features == 4


def test_fixed_input_size_models_are_built_for_the_data_size():
    model = build_model("timm/test_vit", 3, 10, image_size=32, seed=0).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    assert head_names(model) == ("head",)


def test_a_model_that_cannot_take_the_images_is_refused_when_built():
    with pytest.raises(InvalidInput, match=r"cannot take 8x8 images with 1 channel\(s\)"):
        build_model("timm/test_vit", 1, 4, image_size=8)


def test_unknown_names_are_refused_at_parse_with_close_matches():
    with pytest.raises(InvalidInput) as caught:
        parse_spec({"student": {"arch": "timm/mobilenetv3_smal_100"},
                    "teacher": {"path": "t.pt2"}})
    (problem,) = caught.value.problems
    assert problem.startswith("student.arch: unknown timm model 'mobilenetv3_smal_100'")
    assert "timm/mobilenetv3_small_100" in problem


def test_a_timm_teacher_arch_is_checked_too():
    problems = []
    try:
        parse_spec({"teacher": {"path": "t.safetensors", "arch": "timm/resnet_18"},
                    "student": {"arch": "timm/resnet18"}})
    except InvalidInput as exc:
        problems = exc.problems
    assert len(problems) == 1 and problems[0].startswith("teacher.arch: unknown timm model")


@pytest.mark.parametrize("name", ["timm/hf-hub:timm/resnet18", "timm/", "timm/../resnet18"])
def test_hub_and_path_references_are_refused(name):
    problem = arch_problem(name)
    assert problem is not None and "not a timm model name" in problem


def test_the_zoo_message_mentions_timm_names():
    problem = arch_problem("resnet9")
    assert "unknown architecture 'resnet9'" in problem and "timm/<name>" in problem


def test_width_other_than_one_is_refused():
    with pytest.raises(InvalidInput, match="only built at width 1"):
        build_model(SMALL, 1, 10, width=0.5)


def test_a_timm_student_exports_to_onnx_with_parity(tmp_path):
    model = build_model(SMALL, 1, 10, seed=0).eval()
    path = export_onnx(model, (1, 28, 28), tmp_path / "student.onnx", opset=17, max_batch=8)
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert logits.shape == (4, 10)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert (logits.argmax(1) == expected.argmax(1)).all()
