"""ONNX export, the onnxruntime runner, and parity on real inputs."""

import onnx
import pytest
import torch
from torch import nn

from compression.data.dataset import Split
from compression.errors import InvalidInput, StageFailed
from compression.export import (OnnxModel, Parity, check_parity, export_onnx, onnx_input_shape,
                                parity)
from compression.models import build_model
from compression.spec import ExportSpec

SHAPE = (1, 16, 16)


def _split(n: int, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *SHAPE), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return Split(x, y, y % 3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{arch: (model, path)}: tiny_cnn through the TorchScript exporter (opset 17), resnet8
    through the torch.export-based one (opset 18), so both paths are covered."""
    torch.manual_seed(0)
    out = {}
    for arch, opset in (("tiny_cnn", 17), ("resnet8", 18)):
        model = build_model(arch, 1, 10).eval()
        folder = tmp_path_factory.mktemp(arch)
        path = export_onnx(model, SHAPE, folder / f"{arch}.onnx", opset=opset, max_batch=64)
        out[arch] = (model, path, opset)
    return out


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet8"])
def test_export_passes_checker_with_names_opset_and_dynamic_batch(exported, arch):
    model, path, opset = exported[arch]
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert {o.domain or "ai.onnx": o.version for o in proto.opset_import}["ai.onnx"] == opset
    batch_dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")
    # one self-contained file: no temporary or external-data files left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]
    assert onnx_input_shape(path) == SHAPE


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet8"])
def test_dynamic_batch_runs_at_1_and_7_and_matches_torch(exported, arch):
    model, path, _ = exported[arch]
    runner = OnnxModel(path, threads=1)
    for b in (1, 7):
        x = torch.rand(b, *SHAPE)
        out = runner(x)
        assert out.shape == (b, 10) and out.dtype == torch.float32
        with torch.no_grad():
            assert torch.allclose(out, model(x), atol=1e-4)


@pytest.mark.parametrize("arch", ["tiny_cnn", "resnet8"])
def test_parity_on_real_inputs_is_tiny_and_passes_the_check(exported, arch):
    model, path, _ = exported[arch]
    result = parity(model, OnnxModel(path), _split(200), max_samples=150)
    assert result.n == 150
    assert result.max_abs_diff < 1e-4
    assert result.top1_agreement == 1.0
    check_parity(result, ExportSpec())  # does not raise


def test_export_leaves_the_callers_model_alone(tmp_path):
    model = build_model("tiny_cnn", 1, 10).train()
    export_onnx(model, SHAPE, tmp_path / "m.onnx", opset=17, max_batch=8)
    assert model.training and next(model.parameters()).device.type == "cpu"


def test_a_model_whose_onnx_differs_fails_check_parity(exported):
    _, path, _ = exported["tiny_cnn"]
    torch.manual_seed(123)
    other = build_model("tiny_cnn", 1, 10).eval()  # same arch, other weights
    result = parity(other, OnnxModel(path), _split(64))
    with pytest.raises(StageFailed) as info:
        check_parity(result, ExportSpec())
    assert info.value.stage == "export_onnx"
    assert "parity_max_abs_diff" in info.value.reason


def _mean_logits(x: torch.Tensor) -> torch.Tensor:
    """x: [B, C, H, W] -> [B, 2]: (mean, 1 - mean)."""
    m = x.mean(dim=(1, 2, 3))
    return torch.stack([m, 1 - m], dim=1)


def _shifted_logits(x: torch.Tensor) -> torch.Tensor:
    return _mean_logits(x) + torch.tensor([0.25, 0.0])


def test_parity_numbers_by_hand():
    # constant images with means 0, 0.4, 0.8, 1: the +0.25 on class 0 flips only mean 0.4
    values = torch.tensor([0, 102, 204, 255], dtype=torch.uint8)
    x = values.view(4, 1, 1, 1).expand(4, *SHAPE).contiguous()
    split = Split(x, torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    result = parity(_mean_logits, _shifted_logits, split)
    assert result.n == 4
    assert result.max_abs_diff == pytest.approx(0.25, abs=1e-6)
    assert result.top1_agreement == 0.75
    # two samples, spread over the split: rows 0 and 2 (means 0 and 0.8) agree
    assert parity(_mean_logits, _shifted_logits, split, max_samples=2).top1_agreement == 1.0


def test_check_parity_thresholds_and_nan():
    spec = ExportSpec(parity_max_abs_diff=1e-3, parity_min_top1_agreement=0.99)
    check_parity(Parity(n=10, max_abs_diff=1e-3, top1_agreement=0.99), spec)
    with pytest.raises(StageFailed, match="top-1 agreement is 0.9800"):
        check_parity(Parity(n=10, max_abs_diff=0.0, top1_agreement=0.98), spec)
    with pytest.raises(StageFailed, match="max \\|logit difference\\| is nan"):
        check_parity(Parity(n=10, max_abs_diff=float("nan"), top1_agreement=1.0), spec)
    with pytest.raises(StageFailed) as info:
        check_parity(Parity(n=10, max_abs_diff=1.0, top1_agreement=1.0), spec, stage="x")
    assert info.value.stage == "x"


def test_parity_refuses_an_empty_split_and_mismatched_outputs():
    empty = Split(torch.zeros(0, *SHAPE, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                  torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInput, match="needs real images"):
        parity(_mean_logits, _mean_logits, empty)
    with pytest.raises(StageFailed, match=r"returns logits \[8, 3\]"):
        parity(_mean_logits, lambda x: torch.zeros(len(x), 3), _split(8))


class _Broken(nn.Module):
    """Returns the input's shape as data: no ONNX exporter can trace a Python int tuple out."""

    def forward(self, x: torch.Tensor):
        return x.shape[0]


def test_export_failure_and_bad_arguments(tmp_path):
    with pytest.raises(StageFailed) as info:
        export_onnx(_Broken(), SHAPE, tmp_path / "b.onnx", opset=17)
    assert info.value.stage == "export_onnx"
    assert not list(tmp_path.iterdir())  # nothing half-written left behind
    with pytest.raises(InvalidInput) as bad:
        export_onnx(nn.Identity(), (16, 16), tmp_path / "c.onnx", opset=12, min_batch=4,
                    max_batch=2)
    assert len(bad.value.problems) == 3


def test_onnx_input_shape_names_a_foreign_file(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(InvalidInput, match="junk.onnx"):
        onnx_input_shape(junk)
