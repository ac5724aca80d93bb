"""The torchdistill 1.1.5 side of the distillation-throughput benchmark.

It drives torchdistill's own training machinery the way its image-classification example
(``examples/torchvision/image_classification.py``) does: a ``DistillationBox`` built from a
config dict (teacher frozen, ``WeightedSumLoss`` over a ``KDLoss`` term, SGD), a torch
``DataLoader`` built by torchdistill from the dataset dict, and per epoch
``pre_epoch_process`` -> ``forward_process`` / ``post_forward_process`` per batch ->
``post_epoch_process``. Validation is left out because the other side does none either.

torchdistill is a benchmark-only dependency; nothing under ``compression/`` imports it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import RandomSampler, TensorDataset

__all__ = ["BaselineSettings", "import_torchdistill", "kd_train_config", "run_torchdistill"]


@dataclass(frozen=True)
class BaselineSettings:
    """The knobs both sides share, so one place says what is compared."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    alpha: float  # weight of the distillation (KL) term
    temperature: float


def import_torchdistill() -> None:
    """Import torchdistill (and scipy, which it pulls in) before memory is measured."""
    try:
        import torchdistill.core.distillation  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"torchdistill is not installed ({exc}); install it with "
                         "`.venv/bin/pip install torchdistill==1.1.5`") from exc


def kd_train_config(s: BaselineSettings, steps_per_epoch: int) -> dict:
    """torchdistill's ``train`` config for plain KD (what its YAML files hold, as a dict).

    torchdistill's ``KDLoss`` weights the cross-entropy by ``alpha`` and the KL term by
    ``beta`` (``1 - alpha`` by default); ours weights the KL term by ``alpha``. Passing
    ``alpha=1-s.alpha, beta=s.alpha`` makes both compute ``(1-a)*CE + a*T^2*KL``.
    """
    kd = {"student_module_path": ".", "student_module_io": "output",
          "teacher_module_path": ".", "teacher_module_io": "output",
          "temperature": s.temperature, "alpha": 1.0 - s.alpha, "beta": s.alpha,
          "reduction": "batchmean"}
    return {
        "num_epochs": s.epochs,
        "train_data_loader": {
            "dataset_id": "train",
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {"batch_size": s.batch_size, "num_workers": 0, "drop_last": False},
        },
        "teacher": {"forward_proc": "forward_batch_only", "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {
            "lr": s.lr, "momentum": s.momentum, "weight_decay": s.weight_decay}},
        # Cosine stepped per batch down to 0 at the end, like TrainingSpec(schedule="cosine").
        "scheduler": {"key": "CosineAnnealingLR",
                      "kwargs": {"T_max": s.epochs * steps_per_epoch}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {
            "kd": {"criterion": {"key": "KDLoss", "kwargs": kd}, "weight": 1.0}}}},
    }


def run_torchdistill(teacher: nn.Module, student: nn.Module, x: torch.Tensor,
                     y: torch.Tensor, s: BaselineSettings) -> dict:
    """Distill ``student`` from ``teacher`` with torchdistill; return timing figures.

    x: [N, C, H, W] uint8 images; converted once to float in [0, 1] before the clock starts
    (the most favourable in-memory dataset for torchdistill: no per-sample transform).
    y: [N] int64 labels. Returns ``seconds`` (all epochs, wall clock), ``samples`` and
    ``final_loss``.
    """
    from torchdistill.core.distillation import get_distillation_box

    dataset = TensorDataset(x.float().div_(255), y)
    device = torch.device("cpu")
    teacher.eval()  # a frozen teacher predicts with its running BN statistics
    steps = -(-len(dataset) // s.batch_size)
    box = get_distillation_box(teacher, student, {"train": dataset},
                               kd_train_config(s, steps), device, None, False, 1)
    loss = torch.zeros(())
    start = time.perf_counter()
    for epoch in range(box.num_epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            if not torch.isfinite(loss):
                raise RuntimeError(f"torchdistill loss became {loss.item()} at epoch {epoch}")
        box.post_epoch_process()
    seconds = time.perf_counter() - start
    box.clean_modules()
    return {"seconds": seconds, "samples": s.epochs * len(dataset), "final_loss": loss.item()}
