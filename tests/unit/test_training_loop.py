"""The training loop on tiny CPU problems: reproducibility, resume, teacher, events, failures."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compression.data.dataset import Split
from compression.errors import Cancelled, InvalidInput, StageFailed
from compression.events import Event
from compression.losses import LossContext, build_loss
from compression.spec import MitigationSpec, TrainingSpec
from compression.training import TrainResult, train

SPEC = TrainingSpec(epochs=3, batch_size=16, lr=0.1, device="cpu", eval_batch_size=32,
                    progress_every_steps=100, schedule="constant")  # 64 samples: 4 steps/epoch


def toy_split(n: int = 64, seed: int = 0) -> Split:
    """Class 0 is bright on the left half, class 1 on the right; x: [n, 1, 8, 8] uint8."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 100, (n, 1, 8, 8), generator=g)
    x[y == 0, :, :, :4] += 120
    x[y == 1, :, :, 4:] += 120
    return Split(x.to(torch.uint8), y, (torch.arange(n) // 2) % 2)


def student(seed: int = 1, norm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16) if norm else
                         nn.Identity(), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 2))


class CountingTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += len(x)
        return self.net(x)


def real_loss(name: str = "kd") -> Any:
    context = LossContext(num_classes=2, num_groups=2, group_names=("a", "b"),
                          train_class_counts=[32, 32])
    return build_loss(MitigationSpec(name=name, alpha=0.5, temperature=2.0), context)


class GroupWeightedLoss:
    """KD with per-group weights that follow each group's loss: state that must checkpoint."""

    needs_teacher = True

    def __init__(self) -> None:
        self.weights = torch.ones(2) / 2

    def __call__(self, s: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None,
                 g: torch.Tensor) -> torch.Tensor:
        per = F.cross_entropy(s, y, reduction="none") + F.kl_div(
            F.log_softmax(s, -1), F.softmax(t, -1), reduction="none").sum(-1)  # [B]
        with torch.no_grad():
            group_loss = torch.zeros(2).index_add_(0, g, per)
            self.weights = self.weights * torch.exp(0.1 * group_loss)
            self.weights /= self.weights.sum()
        return (per * self.weights[g]).mean() * 2

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = state["weights"].clone()


class NanAt:
    """Wraps a loss and returns NaN on call ``at`` (0-based)."""

    def __init__(self, loss: Any, at: int) -> None:
        self.loss, self.at, self.calls, self.needs_teacher = loss, at, 0, loss.needs_teacher
        self.state_dict, self.load_state_dict = loss.state_dict, loss.load_state_dict

    def __call__(self, *args: Any) -> torch.Tensor:
        self.calls += 1
        value = self.loss(*args)
        return value * float("nan") if self.calls - 1 == self.at else value


def stop_at(call: int) -> Any:
    """A should_stop that turns True on its ``call``-th check (0-based): step ``call`` + 1."""
    counter = itertools.count()
    return lambda: next(counter) >= call


class StopAfterEpoch:
    """Event sink + should_stop: stop at the first check after epoch ``epoch`` has ended."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.done = epoch, False

    def __call__(self, event: Event) -> None:
        self.done |= event.payload.get("epoch") == self.epoch and "epoch_loss" in event.payload

    def should_stop(self) -> bool:
        return self.done


def progress(events: list[Event]) -> list[dict[str, Any]]:
    return [e.payload for e in events if e.kind == "progress" and e.payload["phase"] == "train"]


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_loss_decreases_on_a_learnable_problem() -> None:
    data, model, events = toy_split(), student(), []
    result = train(model, data, dataclasses.replace(SPEC, epochs=6), real_loss("one_hot"),
                   on_event=events.append, stage="train_teacher")
    epoch_losses = [p["epoch_loss"] for p in progress(events) if "epoch_loss" in p]
    assert len(epoch_losses) == 6 and epoch_losses[-1] < 0.5 * epoch_losses[0]
    assert result.final_loss == epoch_losses[-1]
    assert not model.training
    accuracy = (model(data.x.float() / 255).argmax(1) == data.y).float().mean()
    assert accuracy >= 0.95
    assert isinstance(result, TrainResult) and result.epochs_run == 6
    assert result.resumed_from_epoch == 0 and not result.used_teacher_cache
    assert result.samples_per_s > 0 and result.seconds > 0 and result.peak_memory_bytes >= 0
    assert {e.stage for e in events} == {"train_teacher"}


def test_same_seed_same_bits_other_seed_other_bits() -> None:
    spec = dataclasses.replace(SPEC, augment="crop_flip", optimizer="adamw", lr=0.01)
    models = [student() for _ in range(3)]
    for model, seed in zip(models, (0, 0, 1)):
        train(model, toy_split(), dataclasses.replace(spec, seed=seed), GroupWeightedLoss(),
              teacher=CountingTeacher())
    assert_same_weights(models[0], models[1])
    assert not torch.equal(models[0][-1].weight, models[2][-1].weight)


@pytest.mark.parametrize("changes, make_loss", [
    ({"augment": "crop_flip", "optimizer": "adamw", "lr": 0.01, "warmup_epochs": 1,
      "schedule": "cosine"}, GroupWeightedLoss),  # online teacher, stateful loss
    ({"schedule": "step", "step_milestones": (2,), "progress_every_steps": 3}, real_loss),
])
def test_resume_is_bit_exact(tmp_path: Path, changes: dict, make_loss: Any) -> None:
    spec, data = dataclasses.replace(SPEC, **changes), toy_split()
    straight, straight_loss = student(), make_loss()
    train(straight, data, spec, straight_loss, teacher=CountingTeacher(),
          checkpoint_dir=tmp_path / "a")

    stopper = StopAfterEpoch(2)
    with pytest.raises(Cancelled, match="epoch 3 step 1"):
        train(student(), data, spec, make_loss(), teacher=CountingTeacher(),
              checkpoint_dir=tmp_path / "b", on_event=stopper, should_stop=stopper.should_stop)
    torch.manual_seed(1234)  # a resumed process starts from unrelated RNG state
    resumed, resumed_loss, events = student(seed=99), make_loss(), []
    result = train(resumed, data, spec, resumed_loss, teacher=CountingTeacher(),
                   checkpoint_dir=tmp_path / "b", on_event=events.append)
    assert (result.resumed_from_epoch, result.epochs_run) == (2, 1)
    assert any(e.kind == "log" and "resuming" in e.payload["message"] for e in events)
    assert [p["epoch"] for p in progress(events)][-1] == 3
    assert_same_weights(straight, resumed)
    for key, value in straight_loss.state_dict().items():
        assert torch.equal(value, resumed_loss.state_dict()[key])


def test_cancel_keeps_a_loadable_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(Cancelled, match="epoch 2 step 3"):
        train(student(), toy_split(), SPEC, real_loss("one_hot"), checkpoint_dir=tmp_path,
              should_stop=stop_at(6))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["epoch"] == 1
    fresh = student(seed=5)
    fresh.load_state_dict(state["model"])
    assert torch.equal(fresh[1].weight, state["model"]["1.weight"])


def test_nan_loss_fails_the_stage(tmp_path: Path) -> None:
    with pytest.raises(StageFailed, match="loss became NaN at epoch 2 step 2; lower lr") as info:
        train(student(), toy_split(), SPEC, NanAt(real_loss("one_hot"), at=5),
              checkpoint_dir=tmp_path, stage="distill")
    assert info.value.stage == "distill"
    assert torch.load(tmp_path / "last.pt", weights_only=True)["epoch"] == 1


def test_checkpoint_of_another_run_is_refused(tmp_path: Path) -> None:
    one = dataclasses.replace(SPEC, epochs=1)
    first = train(student(), toy_split(), one, real_loss("one_hot"), checkpoint_dir=tmp_path)
    for spec, data, key in [(dataclasses.replace(one, lr=0.2), toy_split(), None),
                            (one, toy_split(seed=1), None),
                            (one, toy_split(), {"alpha": 0.9})]:
        with pytest.raises(InvalidInput, match="belongs to another run.*delete it or use"):
            train(student(), data, spec, real_loss("one_hot"), checkpoint_dir=tmp_path,
                  run_key=key)
    # Reporting-only settings may change: the finished run is picked up as it is.
    again = train(student(), toy_split(), dataclasses.replace(one, progress_every_steps=1),
                  real_loss("one_hot"), checkpoint_dir=tmp_path)
    assert (again.epochs_run, again.resumed_from_epoch) == (0, 1)
    assert again.final_loss == first.final_loss
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InvalidInput, match="cannot be read"):
        train(student(), toy_split(), one, real_loss("one_hot"), checkpoint_dir=tmp_path)


def test_progress_events_carry_the_fields() -> None:
    events: list[Event] = []
    train(student(), toy_split(), dataclasses.replace(SPEC, epochs=2, progress_every_steps=3),
          real_loss("one_hot"), on_event=events.append)
    payloads = progress(events)
    assert [(p["epoch"], p["step"], p["global_step"]) for p in payloads] == [
        (1, 3, 3), (1, 4, 4), (2, 3, 7), (2, 4, 8)]
    for p in payloads:
        assert (p["epochs"], p["steps"], p["lr"]) == (2, 4, 0.1)
        assert p["samples_per_s"] > 0 and p["loss"] > 0
    for window, end in (payloads[0:2], payloads[2:4]):
        assert "epoch_loss" not in window and end["epoch_seconds"] > 0
        assert end["epoch_loss"] == pytest.approx((48 * window["loss"] + 16 * end["loss"]) / 64)


def test_lr_follows_warmup_then_cosine_per_step() -> None:
    events: list[Event] = []
    spec = dataclasses.replace(SPEC, lr=0.2, schedule="cosine", warmup_epochs=1,
                               progress_every_steps=1)
    train(student(), toy_split(), spec, real_loss("one_hot"), on_event=events.append)
    expected = [0.25, 0.5, 0.75, 1.0, 1.0, 0.9619397663, 0.8535533906, 0.6913417162,
                0.5, 0.3086582838, 0.1464466094, 0.0380602337]
    assert [p["lr"] for p in progress(events)] == pytest.approx([0.2 * f for f in expected])


@pytest.mark.parametrize("changes, teacher_samples, cached", [
    ({}, 64, True),  # auto + no augmentation: one pass, then indexed
    ({"teacher_cache": "off"}, 3 * 64, False),
    ({"augment": "crop"}, 3 * 64, False),  # augmented inputs need the teacher online
])
def test_teacher_cache_or_online(changes: dict, teacher_samples: int, cached: bool) -> None:
    teacher, events = CountingTeacher(), []
    result = train(student(), toy_split(), dataclasses.replace(SPEC, **changes), real_loss(),
                   teacher=teacher, on_event=events.append)
    assert teacher.samples == teacher_samples and result.used_teacher_cache is cached
    assert not teacher.training
    cache_events = [e for e in events if e.payload.get("phase") == "teacher_cache"]
    assert len(cache_events) == cached and (result.cache_seconds > 0) is cached


def test_teacher_unused_without_a_teacher_loss() -> None:
    teacher = CountingTeacher()
    train(student(), toy_split(), SPEC, real_loss("one_hot"), teacher=teacher)
    assert teacher.samples == 0


def test_bad_inputs_are_listed() -> None:
    with pytest.raises(InvalidInput, match="needs a teacher"):
        train(student(), toy_split(), SPEC, real_loss("kd"))
    empty = Split(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                  torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInput, match="split is empty"):
        train(student(), empty, SPEC, real_loss("one_hot"))
    floats = dataclasses.replace(toy_split(), x=toy_split().x.float())
    with pytest.raises(InvalidInput, match="expected uint8"):
        train(student(), floats, SPEC, real_loss("one_hot"))


def test_lone_last_sample_joins_the_previous_batch() -> None:
    events: list[Event] = []  # 17 samples, batch 16: BatchNorm would fail on a batch of one
    train(student(norm=True), toy_split(17), dataclasses.replace(SPEC, epochs=1),
          real_loss("one_hot"), on_event=events.append)
    assert [(p["step"], p["steps"]) for p in progress(events)] == [(1, 1)]
