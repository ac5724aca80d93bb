"""Data-parallel training: ``train`` under ``torchrun --nproc_per_node 2`` (gloo, CPU) must end
with the weights one process gets on the same global batches.

The file is its own torchrun entry point: each rank trains every case and saves what it got;
the test then trains the same cases in one process and compares.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from compression.errors import Cancelled, InvalidInput
from compression.losses import LossContext, build_loss
from compression.spec import MitigationSpec, TrainingSpec
from compression.training import train
from tests.integration.conftest import JOB_TIMEOUT_S
from tests.synthetic import row_bars

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
SHAPE = (1, 12, 12)
# 93 examples in batches of 16: the last batch (13) splits 7/6, so shards differ in size.
BASE = dict(epochs=2, batch_size=16, lr=0.1, device="cpu", amp="off", progress_every_steps=2)
CASES = {
    "kd_crop_flip": (MitigationSpec(name="kd", alpha=0.7, temperature=2.0),
                     TrainingSpec(**BASE, augment="crop_flip", teacher_cache="off")),
    "group_dro_cached": (MitigationSpec(name="group_dro", alpha=0.5, temperature=2.0,
                                        params={"beta": 0.7, "eta": 2.0}),
                         TrainingSpec(**BASE, teacher_cache="on")),
    "one_hot": (MitigationSpec(name="one_hot"), TrainingSpec(**BASE)),
}


def data():
    return row_bars(93, seed=0, shape=SHAPE), row_bars(40, seed=1, shape=SHAPE)


def student() -> nn.Module:
    """No BatchNorm: its batch statistics are per rank, so only BN-free nets match exactly."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 12 * 12, 10))


def teacher() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(nn.Flatten(), nn.Linear(144, 10))


class Counting:
    """The loss, counting the examples this process computed it on."""

    def __init__(self, loss):
        self.loss, self.seen = loss, 0

    def __getattr__(self, name):
        return getattr(self.loss, name)

    def __call__(self, logits, labels, *rest):
        self.seen += len(labels)
        return self.loss(logits, labels, *rest)


def train_case(name: str, out: Path, should_stop=lambda: False) -> dict:
    mitigation, spec = CASES[name]
    split, holdout = data()
    context = LossContext(10, 2, ("even", "odd"), split.y.bincount(minlength=10).tolist(),
                          holdout=holdout)
    loss = Counting(build_loss(mitigation, context))
    model, losses = student(), []

    def on_event(event):
        if event.kind == "progress" and event.payload.get("phase") == "train":
            losses.append(event.payload["loss"])

    result = train(model, split, spec, loss, teacher=teacher(), checkpoint_dir=out / name,
                   on_event=on_event, should_stop=should_stop, stage=name)
    return {"weights": model.state_dict(), "final_loss": result.final_loss,
            "progress_losses": losses, "loss_state": loss.state_dict(), "seen": loss.seen}


def rank_main(out_dir: str) -> None:
    import torch.distributed as dist

    from compression import distributed

    assert distributed.init_from_env()
    rank, out = dist.get_rank(), Path(out_dir)
    results = {name: train_case(name, out / f"rank{rank}") for name in CASES}
    calls = iter(range(1000))  # only rank 0 asks to stop, at its 4th check
    try:
        train_case("one_hot", out / f"cancel{rank}",
                   should_stop=lambda: rank == 0 and next(calls) >= 3)
        results["cancelled"] = None
    except Cancelled as exc:
        results["cancelled"] = str(exc)
    try:  # 3 examples a step cannot give both ranks the 2 each that BatchNorm needs
        train(student(), data()[0], TrainingSpec(**{**BASE, "batch_size": 3}),
              build_loss(MitigationSpec(name="one_hot"), LossContext(10, 2, ("e", "o"), [1] * 10)))
        results["small_batch"] = None
    except InvalidInput as exc:
        results["small_batch"] = str(exc)
    torch.save(results, out / f"rank{rank}.pt")
    distributed.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=JOB_TIMEOUT_S,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [{**torch.load(out / f"rank{r}.pt"), "dir": out / f"rank{r}"} for r in range(2)]


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_train_the_weights_of_one_process(ranks, name, tmp_path):
    single = train_case(name, tmp_path)
    for rank in ranks:
        got = rank[name]
        for key, value in single["weights"].items():
            assert torch.allclose(got["weights"][key], value, atol=2e-5), (name, key)
        assert got["final_loss"] == pytest.approx(single["final_loss"], rel=1e-5)
        assert got["progress_losses"] == pytest.approx(single["progress_losses"], rel=1e-5)
        assert got["loss_state"].keys() == single["loss_state"].keys()
        for key, value in single["loss_state"].items():
            assert torch.allclose(torch.as_tensor(got["loss_state"][key]),
                                  torch.as_tensor(value), atol=1e-6), (name, key)
    assert single["weights"]["0.weight"].ne(student().state_dict()["0.weight"]).any()


def test_each_rank_trains_on_its_half_of_every_batch(ranks):
    seen = [r["one_hot"]["seen"] for r in ranks]
    assert seen == [2 * (5 * 8 + 7), 2 * (5 * 8 + 6)]  # 5 full batches of 16, then 13


def test_group_dro_weights_moved_and_agree(ranks):
    weights = [r["group_dro_cached"]["loss_state"]["group_weights"] for r in ranks]
    assert torch.equal(weights[0], weights[1])
    assert not torch.allclose(weights[0], torch.full_like(weights[0], 0.5))


def test_only_rank_0_writes_checkpoints(ranks):
    assert (ranks[0]["dir"] / "one_hot" / "last.pt").exists()
    assert not (ranks[1]["dir"] / "one_hot").exists() or \
        not any((ranks[1]["dir"] / "one_hot").iterdir())


def test_a_stop_on_rank_0_stops_every_rank_at_the_same_step(ranks):
    messages = [r["cancelled"] for r in ranks]
    assert messages[0] is not None and messages[0] == messages[1]
    assert "epoch 1 step 4" in messages[0]


def test_a_global_batch_too_small_for_the_ranks_is_refused(ranks):
    for rank in ranks:
        assert "use batch_size >= 4 (it is the global batch)" in rank["small_batch"]


if __name__ == "__main__":
    rank_main(sys.argv[1])
