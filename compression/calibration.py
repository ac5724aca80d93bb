"""Per-class post-hoc calibration of the teacher, fitted on the HOLDOUT split.

Form (bias-corrected temperature scaling, a constrained vector scaling): one temperature
shared by all classes and one logit bias per class,

    calibrated(z) = z / T + b        z: [N, C], T > 0, b: [C]

fitted by minimising the holdout NLL + l2 * ||b||^2 with L-BFGS. The shared T fixes global
over/under-confidence; the biases fix per-class miscalibration (a long-tailed teacher
under-predicts its rare classes), which is what a robust student needs from its teacher. The
small L2 keeps the bias of a class with few holdout examples from running off, and pins the
one direction softmax ignores (adding a constant to every bias).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compression.errors import InvalidInput
from compression.reliability import expected_calibration_error

__all__ = ["Calibration", "CalibratedTeacher", "fit_calibration", "calibrated"]


@dataclass(frozen=True)
class Calibration:
    """A fitted calibration and its holdout NLL / ECE before and after (ECE: 15 bins, top-1)."""

    temperature: float
    bias: tuple[float, ...]  # [C]
    l2: float
    n: int  # holdout examples it was fitted on
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float

    def apply(self, logits: Tensor) -> Tensor:
        """logits: [..., C] -> calibrated logits [..., C], same dtype and device."""
        bias = torch.tensor(self.bias, dtype=logits.dtype, device=logits.device)
        return logits / self.temperature + bias

    def to_dict(self) -> dict[str, Any]:
        return {"method": "temperature+class_bias", "split": "holdout", **self.__dict__,
                "bias": list(self.bias)}


def fit_calibration(logits: Tensor, y: Tensor, *, l2: float = 1e-3,
                    max_iter: int = 200) -> Calibration:
    """Fit T and b on holdout logits: [N, C] and labels y: [N] (see the module docstring)."""
    z, y = _checked(logits, y, l2)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0
    bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t, bias], lr=1.0, max_iter=max_iter,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp() + bias, y) + l2 * bias.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    fitted = (float(log_t.detach().exp()), tuple(bias.detach().tolist()))
    if not all(map(_finite, (fitted[0], *fitted[1]))):  # should not happen; keep the teacher
        fitted = (1.0, (0.0,) * z.shape[1])
    after = z / fitted[0] + torch.tensor(fitted[1], dtype=torch.float64)
    return Calibration(temperature=fitted[0], bias=fitted[1], l2=l2, n=len(y),
                       nll_before=_nll(z, y), nll_after=_nll(after, y),
                       ece_before=_ece(z, y), ece_after=_ece(after, y))


class CalibratedTeacher(nn.Module):
    """``teacher(x)`` followed by ``calibration.apply``. A module so that ``.to(device)``
    and ``.eval()`` reach a module teacher; any other callable is kept as a plain attribute."""

    def __init__(self, teacher: Callable[[Tensor], Tensor], calibration: Calibration):
        super().__init__()
        self.teacher = teacher
        self.calibration = calibration

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, C, H, W] -> calibrated logits [B, K]."""
        return self.calibration.apply(self.teacher(x))


def calibrated(teacher: Callable[[Tensor], Tensor],
               calibration: Calibration) -> CalibratedTeacher:
    """The teacher with its logits calibrated; use it wherever the teacher was used."""
    return CalibratedTeacher(teacher, calibration)


def _nll(z: Tensor, y: Tensor) -> float:
    return float(F.cross_entropy(z, y))


def _ece(z: Tensor, y: Tensor) -> float:
    conf, pred = z.softmax(dim=1).max(dim=1)
    return expected_calibration_error(conf, pred == y)


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def _checked(logits: Tensor, y: Tensor, l2: float) -> tuple[Tensor, Tensor]:
    problems = []
    if logits.ndim != 2 or y.shape != (logits.shape[0],):
        problems.append(f"logits {tuple(logits.shape)} and labels {tuple(y.shape)} must be "
                        "[N, C] and [N]")
    elif len(y) == 0:
        problems.append("no holdout examples to calibrate on; set data.holdout_fraction > 0")
    elif int(y.min()) < 0 or int(y.max()) >= logits.shape[1]:
        problems.append(f"labels span [{int(y.min())}, {int(y.max())}] but the logits have "
                        f"{logits.shape[1]} classes")
    elif not torch.isfinite(logits).all():
        problems.append("the teacher's holdout logits hold NaN or inf; check the teacher")
    if not l2 >= 0:
        problems.append(f"l2 is {l2}; it must be >= 0")
    if problems:
        raise InvalidInput(problems, "cannot calibrate the teacher")
    return logits.detach().cpu().double(), y.detach().cpu().long()
