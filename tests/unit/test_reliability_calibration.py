"""Per-class post-hoc calibration of the teacher on holdout."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.calibration import Calibration, calibrated, fit_calibration
from compression.errors import InvalidInput


def sample(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """True logits [n, 4] and labels drawn from softmax(true logits): calibrated by design."""
    g = torch.Generator().manual_seed(seed)
    z = 2 * torch.randn(n, 4, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    return z, y


SHIFT = torch.tensor([1.5, 0.0, 0.0, -1.0])


def miscalibrated(z: torch.Tensor) -> torch.Tensor:
    """Over-confident (x3) and biased toward class 0, away from class 3."""
    return 3 * z + SHIFT


def test_fit_lowers_holdout_nll_and_ece_and_recovers_the_distortion():
    z, y = sample(4000, seed=0)
    cal = fit_calibration(miscalibrated(z), y)
    assert cal.nll_after < cal.nll_before - 0.1
    assert cal.ece_after < cal.ece_before
    assert cal.temperature == pytest.approx(3.0, rel=0.1)
    centred = torch.tensor(cal.bias) - torch.tensor(cal.bias).mean()
    expected = -(SHIFT - SHIFT.mean()) / 3  # undo the shift on the rescaled logits
    assert torch.allclose(centred, expected, atol=0.15)
    # and it generalises: lower NLL on a fresh sample from the same distribution
    z2, y2 = sample(4000, seed=1)
    before = F.cross_entropy(miscalibrated(z2), y2)
    after = F.cross_entropy(cal.apply(miscalibrated(z2)), y2)
    assert after < before - 0.1
    assert after == pytest.approx(F.cross_entropy(z2, y2).item(), abs=0.03)


def test_a_calibrated_teacher_is_left_nearly_alone():
    z, y = sample(4000, seed=2)
    cal = fit_calibration(z, y)
    assert cal.temperature == pytest.approx(1.0, abs=0.1)
    assert max(abs(b) for b in cal.bias) < 0.15
    assert cal.nll_after <= cal.nll_before + 1e-9


def test_apply_hand_value_keeps_dtype_and_device():
    cal = Calibration(temperature=2.0, bias=(1.0, -1.0), l2=0.0, n=1, nll_before=0.0,
                      nll_after=0.0, ece_before=0.0, ece_after=0.0)
    out = cal.apply(torch.tensor([[2.0, 4.0]], dtype=torch.float64))
    assert out.tolist() == [[2.0, 1.0]] and out.dtype == torch.float64
    data = json.loads(json.dumps(cal.to_dict()))
    assert data["temperature"] == 2.0 and data["bias"] == [1.0, -1.0]
    assert data["split"] == "holdout" and "nll_before" in data and "ece_after" in data


def test_calibrated_teacher_is_a_module_that_moves_its_teacher():
    cal = Calibration(temperature=2.0, bias=(0.5, 0.0), l2=0.0, n=1, nll_before=0.0,
                      nll_after=0.0, ece_before=0.0, ece_after=0.0)
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), nn.Dropout(0.5))
    wrapped = calibrated(inner, cal).eval()
    assert not inner.training  # eval reaches the wrapped module (prepare_teacher relies on it)
    x = torch.rand(3, 1, 2, 2)
    assert torch.allclose(wrapped(x), inner(x) / 2 + torch.tensor([0.5, 0.0]))
    plain = calibrated(lambda x: torch.zeros(len(x), 2), cal)  # any callable teacher
    assert plain(x).tolist() == [[0.5, 0.0]] * 3


def test_bad_inputs_are_refused():
    with pytest.raises(InvalidInput, match="holdout"):
        fit_calibration(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInput, match="3 classes"):
        fit_calibration(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(InvalidInput, match="NaN"):
        fit_calibration(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
