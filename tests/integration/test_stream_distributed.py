"""A streamed split under ``torchrun --nproc_per_node 2`` (gloo, CPU): the ranks read their
share of every global batch through DataLoader workers and end with the weights one process
gets; the teacher-logit cache is computed once over the ranks, in RAM or spilled to a file.

The file is its own torchrun entry point, as ``test_distributed_training.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compression.data.dataset import Split
from compression.data.lazy_sources import index_imagefolder
from compression.data.stream import LazyImages
from compression.losses import LossContext, build_loss
from compression.spec import MitigationSpec, TrainingSpec
from compression.training import train
from tests.integration.test_distributed_training import free_port, student
from tests.synthetic import row_bars
from tests.wds import png

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
N = 93  # batches of 16: the last (13) splits 7/6 over the ranks
BASE = dict(epochs=2, batch_size=16, lr=0.1, device="cpu", amp="off", channels_last=False,
            progress_every_steps=2)
CASES = {
    "kd_cached_ram": TrainingSpec(**BASE, teacher_cache="on"),
    "kd_cached_spilled": TrainingSpec(**BASE, teacher_cache="on", teacher_cache_ram_mib=0),
    "kd_crop_flip": TrainingSpec(**BASE, augment="crop_flip", teacher_cache="off"),
}


class CountingTeacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net, self.samples = nn.Sequential(nn.Flatten(), nn.Linear(144, 10)), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += len(x)
        return self.net(x)


def write_images(root: Path) -> None:
    """row_bars as an image folder of PNGs: class k in folder c<k>, read back in that order."""
    split = row_bars(N, seed=0, shape=(1, 12, 12))
    for i, (x, y) in enumerate(zip(split.x, split.y)):
        folder = root / f"c{int(y)}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:03d}.png").write_bytes(png(x[0].numpy()))


def streamed(root: Path) -> Split:
    raw = index_imagefolder(root, 0, None)
    y = torch.from_numpy(raw.y)
    return Split(LazyImages(raw.x, workers=1), y, y % 2)


def train_case(name: str, root: Path, out: Path) -> dict:
    data = streamed(root)
    counts = np.bincount(data.y.numpy(), minlength=10).tolist()
    loss = build_loss(MitigationSpec(name="kd", alpha=0.7, temperature=2.0),
                      LossContext(10, 2, ("even", "odd"), counts))
    model, teacher = student(), CountingTeacher()
    train(model, data, CASES[name], loss, teacher=teacher, checkpoint_dir=out / name, stage=name)
    return {"weights": model.state_dict(), "teacher_samples": teacher.samples}


def rank_main(root: str, out_dir: str) -> None:
    import torch.distributed as dist

    from compression import distributed

    assert distributed.init_from_env()
    rank, out = dist.get_rank(), Path(out_dir)
    results = {name: train_case(name, Path(root), out / f"rank{rank}") for name in CASES}
    torch.save(results, out / f"rank{rank}.pt")
    distributed.shutdown()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bars")
    write_images(root)
    return root


@pytest.fixture(scope="module")
def ranks(images, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp-stream")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(images), str(out)]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO),
                               "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.parametrize("name", CASES)
def test_two_streaming_ranks_train_the_weights_of_one_process(ranks, images, name, tmp_path):
    single = train_case(name, images, tmp_path)
    for rank in ranks:
        for key, value in single["weights"].items():
            assert torch.allclose(rank[name]["weights"][key], value, atol=2e-5), (name, key)


@pytest.mark.parametrize("name", ["kd_cached_ram", "kd_cached_spilled"])
def test_each_rank_computes_its_share_of_the_teacher_cache(ranks, name):
    # 93 samples in cache batches of 16: 6 batches, 3 per rank; rank 1's last holds 13
    assert [r[name]["teacher_samples"] for r in ranks] == [48, 45]


if __name__ == "__main__":
    rank_main(sys.argv[1], sys.argv[2])
