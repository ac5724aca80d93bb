import pytest
import torch

from compression.data.dataset import Dataset, Split
from compression.errors import InvalidInput
from compression.losses import (
    Loss, LossContext, Objective, StatelessLoss, build_loss, cross_entropy, kd_loss, known_losses,
)
from compression.losses import registry
from compression.spec import MitigationSpec

CTX = LossContext(num_classes=2, num_groups=2, group_names=("a", "b"),
                  train_class_counts=[5, 1])
STUDENT = torch.tensor([[1.0, 0.0], [0.2, 0.4]])
TEACHER = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
LABELS = torch.tensor([0, 1])
GROUPS = torch.tensor([0, 1])


def test_known_losses_are_the_two_baselines():
    assert {"kd", "one_hot", "auto"} <= set(known_losses())


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="dro"), CTX)
    assert "'dro'" in str(err.value) and "kd, one_hot" in str(err.value)


def test_unknown_params_are_listed_with_what_is_accepted():
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="kd", params={"beta": 1, "gamma": 2}), CTX)
    assert len(err.value.problems) == 2
    assert "params.beta" in str(err.value) and "params.gamma" in str(err.value)
    assert "accepted: label_loss, label_tau" in str(err.value)
    with pytest.raises(InvalidInput, match="accepted: none"):
        build_loss(MitigationSpec(name="one_hot", params={"beta": 1}), CTX)


def test_one_hot_is_cross_entropy_and_ignores_the_teacher():
    loss = build_loss(MitigationSpec(name="one_hot", alpha=0.9, temperature=8.0), CTX)
    assert loss.needs_teacher is False
    expected = cross_entropy(STUDENT, LABELS)
    assert torch.equal(loss(STUDENT, LABELS, None, GROUPS), expected)
    assert torch.equal(loss(STUDENT, LABELS, TEACHER, GROUPS), expected)


def test_kd_uses_the_spec_alpha_and_temperature():
    loss = build_loss(MitigationSpec(name="kd", alpha=0.7, temperature=3.0), CTX)
    assert loss.needs_teacher is True
    assert torch.equal(loss(STUDENT, LABELS, TEACHER, GROUPS),
                       kd_loss(STUDENT, TEACHER, LABELS, 0.7, 3.0))
    with pytest.raises(ValueError, match="needs teacher_logits"):
        loss(STUDENT, LABELS, None, GROUPS)


def test_stateless_losses_have_empty_state_and_refuse_foreign_state():
    loss = build_loss(MitigationSpec(name="kd"), CTX)
    assert isinstance(loss, Loss)
    assert loss.state_dict() == {}
    loss.load_state_dict({})
    with pytest.raises(InvalidInput, match="group_weights"):
        loss.load_state_dict({"group_weights": [0.5, 0.5]})


def _toy_builder(spec, context, params):
    scale = params["scale"] * context.num_groups

    def toy(student_logits, labels, teacher_logits, groups):
        return scale * cross_entropy(student_logits, labels)

    return StatelessLoss("toy", toy, needs_teacher=False)


def test_a_new_entry_gets_defaults_and_checked_params(monkeypatch):
    monkeypatch.setitem(registry._OBJECTIVES, "toy",
                        Objective(_toy_builder, params={"scale": 1.0, "flag": False}))
    assert "toy" in known_losses()
    ce = cross_entropy(STUDENT, LABELS)
    default = build_loss(MitigationSpec(name="toy"), CTX)
    assert default(STUDENT, LABELS, None, GROUPS).item() == pytest.approx(2 * ce.item())
    scaled = build_loss(MitigationSpec(name="toy", params={"scale": 3}), CTX)  # int for float
    assert scaled(STUDENT, LABELS, None, GROUPS).item() == pytest.approx(6 * ce.item())
    with pytest.raises(InvalidInput) as err:
        build_loss(MitigationSpec(name="toy", params={"scale": "x", "flag": 1, "s": 1}), CTX)
    text = str(err.value)
    assert len(err.value.problems) == 3
    assert "params.scale is 'x'" in text and "params.flag is 1" in text
    assert "accepted: flag, scale" in text


def test_context_from_dataset_and_its_checks():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    train = Split(x, torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]))
    data = Dataset(train, train, train, class_names=("a", "b", "c"), group_names=("g0", "g1"))
    ctx = LossContext.from_dataset(data)
    assert ctx == LossContext(3, 2, ["g0", "g1"], (3, 1, 0), None)  # sequences normalised
    assert ctx.group_names == ("g0", "g1") and ctx.train_class_counts == [3, 1, 0]
    with pytest.raises(ValueError):
        LossContext(num_classes=2, num_groups=3, group_names=("a",), train_class_counts=[1, 1])
    with pytest.raises(ValueError):
        LossContext(num_classes=3, num_groups=1, group_names=("a",), train_class_counts=[1, 1])
