import json

import numpy as np
import pytest
import torch
from torch import nn

from compression.data.dataset import Split
from compression.errors import InvalidInput
from compression.evaluation import load_json, predict_logits, write_json


def _split(n: int = 7) -> Split:
    x = torch.arange(n * 4, dtype=torch.uint8).view(n, 1, 2, 2) * 8
    return Split(x, torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long))


class SumModel(nn.Module):
    """logits [b, 2] = (sum of pixels, -sum of pixels); dropout shows the mode."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(p=0.9)

    def forward(self, x):
        s = self.drop(x).flatten(1).sum(dim=1)
        return torch.stack([s, -s], dim=1)


def test_module_logits_are_scaled_batched_and_mode_restored():
    split, model = _split(), SumModel().train()
    out = predict_logits(model, split, batch_size=3)
    expected = split.x.float().div(255).flatten(1).sum(dim=1)
    assert out.dtype == torch.float32 and out.shape == (7, 2)
    assert torch.allclose(out[:, 0], expected) and torch.allclose(out[:, 1], -expected)
    assert model.training  # given back in train mode
    predict_logits(model.eval(), split)
    assert not model.training


def test_any_callable_works_and_sees_inference_mode_batches():
    seen = []

    def fn(x):
        seen.append((x.shape[0], x.dtype, float(x.max()), torch.is_inference_mode_enabled()))
        return np.ones((x.shape[0], 3), dtype=np.float64)  # like an onnxruntime wrapper

    split = _split()
    split.x[0, 0, 0, 0] = 255
    out = predict_logits(fn, split, batch_size=3)
    assert out.shape == (7, 3) and out.dtype == torch.float32
    assert [s[0] for s in seen] == [3, 3, 1]
    assert all(s[1] == torch.float32 and s[3] for s in seen)
    assert seen[0][2] == 1.0  # uint8 255 -> 1.0


def test_bad_model_output_and_batch_size_are_invalid_input():
    with pytest.raises(InvalidInput, match=r"returned shape \(3,\)"):
        predict_logits(lambda x: x.flatten(1).sum(1), _split(), batch_size=3)
    with pytest.raises(InvalidInput, match="batch_size"):
        predict_logits(SumModel(), _split(), batch_size=0)


def test_empty_split_gives_no_logits():
    assert predict_logits(SumModel(), _split(0)).shape == (0, 0)


def test_write_json_is_atomic_and_strict(tmp_path):
    path = write_json(tmp_path / "sub" / "r.json", {"a": [1, 2.5, None]})
    assert json.loads(path.read_text()) == {"a": [1, 2.5, None]}
    with pytest.raises(ValueError):
        write_json(path, {"a": float("nan")})
    assert load_json(path) == {"a": [1, 2.5, None]}  # old content intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["r.json"]  # no temp files left


def test_load_json_names_the_bad_file(tmp_path):
    with pytest.raises(InvalidInput, match="missing.json"):
        load_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidInput, match="bad.json is not valid JSON"):
        load_json(bad)
