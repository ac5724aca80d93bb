"""group_dro: the robust objective, the holdout weight update, its state and the loop hook."""

import math

import pytest
import torch
from torch import nn

from compression.data.dataset import Split
from compression.errors import Cancelled, InvalidInput
from compression.losses import GroupDROLoss, LossContext, build_loss, kd_loss
from compression.losses.group_dro import exponentiated_gradient, robust_objective
from compression.spec import MitigationSpec, TrainingSpec
from compression.training import train


def split(n: int = 64, seed: int = 0) -> Split:
    """Class 0 bright on the left, class 1 on the right; group = class (x: [n, 1, 8, 8])."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randint(0, 100, (n, 1, 8, 8), generator=g)
    x[y == 0, :, :, :4] += 120
    x[y == 1, :, :, 4:] += 120
    return Split(x.to(torch.uint8), y, y.clone())


def context(holdout: Split | None = None) -> LossContext:
    return LossContext(2, 2, ("left", "right"), [32, 32],
                       holdout=split(16, seed=5) if holdout is None else holdout)


class Constant(nn.Module):
    """Predicts ``cls`` for every input."""

    def __init__(self, cls: int):
        super().__init__()
        self.bias = nn.Parameter(torch.eye(2)[cls] * 5)

    def forward(self, x):
        return self.bias.expand(len(x), 2)


def test_robust_objective_hand_value():
    per_example = torch.tensor([1.0, 2.0, 3.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1])
    w = torch.tensor([0.25, 0.75])
    # 0.5 * mean 3 + 0.5 * (0.25 * 1.5 + 0.75 * 4.5)
    assert robust_objective(per_example, groups, w, 0.5).item() == pytest.approx(3.375)
    assert robust_objective(per_example, groups, w, 0.0).item() == pytest.approx(3.0)
    # a group absent from the batch adds nothing
    only0 = robust_objective(per_example[:2], groups[:2], torch.tensor([0.5, 0.5]), 1.0)
    assert only0.item() == pytest.approx(0.5 * 1.5)


def test_exponentiated_gradient_hand_value_and_no_overflow():
    w = exponentiated_gradient(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), eta=1.0)
    assert w.tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])
    big = exponentiated_gradient(torch.tensor([0.5, 0.5]), torch.tensor([0.0, 1.0]), eta=1e4)
    assert torch.isfinite(big).all() and big.sum().item() == pytest.approx(1.0)


def test_loss_with_uniform_weights_and_beta_zero_is_kd():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 2, (8,))
    loss = build_loss(MitigationSpec(name="group_dro", alpha=0.4, temperature=2.0,
                                     params={"beta": 0.0}), context())
    assert loss(s, y, t, y).item() == pytest.approx(kd_loss(s, t, y, 0.4, 2.0).item(),
                                                     rel=1e-6)


def test_weights_stay_a_distribution_and_move_toward_the_worst_group():
    loss = build_loss(MitigationSpec(name="group_dro", params={"eta": 1.0}), context())
    assert loss.weights.tolist() == [0.5, 0.5]
    loss.on_epoch_end(Constant(0))  # right on every "left" example, wrong on every "right"
    assert loss.holdout_error == [0.0, 1.0]
    assert loss.weights.tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)])
    for _ in range(3):
        loss.on_epoch_end(Constant(0))
    assert loss.weights.sum().item() == pytest.approx(1.0) and (loss.weights >= 0).all()
    assert loss.weights[1] > 0.98 and loss.updates == 4
    loss.on_epoch_end(Constant(1))  # now the other group is the worst: weight flows back
    assert loss.weights[0].item() == pytest.approx(math.e / (math.e + math.e ** 4))


def test_the_objective_follows_the_weights():
    loss = build_loss(MitigationSpec(name="group_dro", alpha=0.0, params={"beta": 1.0}),
                      context())
    s = torch.tensor([[2.0, 0.0], [2.0, 0.0]])
    y = torch.tensor([0, 1])  # easy on group 0, hard on group 1
    before = loss(s, y, None, y).item()
    loss.on_epoch_end(Constant(0))
    assert loss(s, y, None, y).item() > before  # more weight on the hard group


def test_state_round_trips_and_foreign_state_is_refused():
    loss = build_loss(MitigationSpec(name="group_dro"), context())
    loss.on_epoch_end(Constant(0))
    state = loss.state_dict()
    fresh = build_loss(MitigationSpec(name="group_dro"), context())
    fresh.load_state_dict(state)
    assert torch.equal(fresh.weights, loss.weights)
    assert fresh.updates == 1 and fresh.holdout_error == [0.0, 1.0]
    s, t, y = torch.randn(4, 2), torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.equal(fresh(s, y, t, y), loss(s, y, t, y))
    state["group_weights"][0] = 0.0  # the saved copy is not the live tensor
    assert loss.weights[0] > 0
    with pytest.raises(InvalidInput, match="group_dro"):
        fresh.load_state_dict({})
    with pytest.raises(InvalidInput, match="2 subgroups"):
        fresh.load_state_dict({"group_weights": torch.ones(3) / 3})


def test_build_needs_a_holdout_and_valid_params():
    empty = Split(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), torch.zeros(0, dtype=torch.long),
                  torch.zeros(0, dtype=torch.long))
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="group_dro", params={"beta": 2.0, "eta": -1.0}),
                   context(holdout=empty))
    assert len(err.value.problems) == 3 and "holdout" in str(err.value)


class Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))

    def forward(self, x):
        return self.net(x)


def student() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 2))


class StopAfterEpoch:
    """Event sink + should_stop: stop at the first check after epoch ``epoch`` has ended."""

    def __init__(self, epoch: int) -> None:
        self.epoch, self.done = epoch, False

    def __call__(self, event) -> None:
        self.done |= event.payload.get("epoch") == self.epoch and "epoch_loss" in event.payload

    def should_stop(self) -> bool:
        return self.done


SPEC = TrainingSpec(epochs=3, batch_size=16, lr=0.1, device="cpu", schedule="constant",
                    progress_every_steps=100)


def dro() -> GroupDROLoss:
    return build_loss(MitigationSpec(name="group_dro", params={"eta": 2.0}), context())


def test_training_updates_the_weights_each_epoch_and_resumes_exactly(tmp_path):
    whole, whole_loss = student(), dro()
    train(whole, split(), SPEC, whole_loss, teacher=Teacher())
    assert whole_loss.updates == 3 and len(whole_loss.holdout_error) == 2
    assert whole_loss.weights.sum().item() == pytest.approx(1.0)

    stop = StopAfterEpoch(2)
    with pytest.raises(Cancelled):
        train(student(), split(), SPEC, dro(), teacher=Teacher(), checkpoint_dir=tmp_path,
              on_event=stop, should_stop=stop.should_stop)
    # a fresh process: new model and loss, state only from the checkpoint
    resumed, resumed_loss = student(), dro()
    result = train(resumed, split(), SPEC, resumed_loss, teacher=Teacher(),
                   checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 2 and resumed_loss.updates == 3
    assert torch.equal(resumed_loss.weights, whole_loss.weights)
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
