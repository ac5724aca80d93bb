"""The streaming data path gives what the in-memory path gives: samples, batches, weights."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from compression.data import load_dataset
from compression.data.loader import loading
from compression.data.stream import (EpochBatches, LazyImages, OrderedBatches, SampleDataset,
                                     augment_sample, is_streamed, make_loader)
from compression.errors import Cancelled, InvalidInput
from compression.losses import LossContext, build_loss
from compression.spec import MitigationSpec, TrainingSpec, parse_spec
from compression.report_sections import DataSummary
from compression.training import TeacherCache, steps_per_epoch, train
from tests.wds import png, shard

CLASSES = 3


def _image(rng: np.random.Generator, c: int, i: int) -> np.ndarray:
    """10x10, gray for every third image, RGB otherwise; class c lights row band 3c."""
    x = rng.integers(0, 80, (10, 10, 3), dtype=np.uint8)
    x[3 * c:3 * c + 2] += 150
    return x[:, :, 0] if i % 3 == 0 else x


def _write(root: Path, counts: dict[str, int], seed: int) -> Path:
    """imagefolder/<split>/c<k>/<i>.png and the same samples as one shard per split."""
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        samples = []
        for c in range(CLASSES):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n - 3 * c):  # fewer of the later classes
                pixels = _image(rng, c, i)
                (root / split / f"c{c}" / f"{i:03d}.png").write_bytes(png(pixels))
                group = b"day" if i % 2 else b"night"
                samples.append((f"c{c}-{i:03d}", {"png": png(pixels), "cls": str(c).encode(),
                                                  "group": group}))
        (root / f"{split}.tar").write_bytes(shard(samples))
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    return _write(tmp_path_factory.mktemp("stream"), {"train": 20, "test": 8}, seed=0)


def _data(files: Path, source: str, in_memory: str, **more) -> dict:
    paths = ({"path": str(files / "train"), "test_path": str(files / "test")}
             if source == "imagefolder" else
             {"path": str(files / "train.tar"), "test_path": str(files / "test.tar")})
    return {"source": source, **paths, "in_memory": in_memory, "workers": 0,
            "image_size": 8, "long_tail": {"profile": "exp", "imbalance": 2}, **more}


def _load(files: Path, source: str, in_memory: str, **more):
    return load_dataset(parse_spec({"data": _data(files, source, in_memory, **more)}).data)


@pytest.mark.parametrize("source, subgroups", [
    ("imagefolder", {"by": "frequency"}),
    ("webdataset", {"by": "attribute", "also_by": ["class"]}),
])
def test_streamed_splits_hold_the_in_memory_samples_labels_and_groups(files, source, subgroups):
    held = _load(files, source, "always", subgroups=subgroups)
    streamed = _load(files, source, "never", subgroups=subgroups)
    assert loading(held) == "in_memory" and loading(streamed) == "streaming"
    assert streamed.group_names == held.group_names and streamed.layout == held.layout
    for name in ("train", "holdout", "test"):
        a, b = getattr(held, name), getattr(streamed, name)
        assert is_streamed(b.x) and not is_streamed(a.x)
        assert b.x.shape == a.x.shape and len(b) == len(a) > 0
        assert torch.equal(b.x[:], a.x)
        assert torch.equal(b.y, a.y) and torch.equal(b.group, a.group)
    assert held.input_shape == streamed.input_shape == (3, 8, 8)  # gray promoted to RGB


def test_auto_streams_only_what_passes_the_memory_budget(files):
    assert loading(_load(files, "imagefolder", "auto")) == "in_memory"
    assert loading(_load(files, "imagefolder", "auto", memory_budget_mib=0)) == "streaming"
    assert loading(_load(files, "webdataset", "auto", memory_budget_mib=0)) == "streaming"


def test_never_needs_a_source_that_can_stream():
    with pytest.raises(InvalidInput, match="in_memory 'never'"):
        parse_spec({"data": {"source": "fashion-mnist", "in_memory": "never"}})


def test_lazy_images_index_like_a_tensor(files):
    held = _load(files, "webdataset", "always").train.x
    lazy = _load(files, "webdataset", "never", workers=2).train.x
    assert isinstance(lazy, LazyImages) and lazy.dtype == torch.uint8 and lazy.ndim == 4
    assert torch.equal(lazy[3], held[3]) and torch.equal(lazy[-1], held[-1])
    assert torch.equal(lazy[2:9:3], held[2:9:3])
    idx = torch.tensor([5, 0, 5, len(held) - 1])
    assert torch.equal(lazy[idx], held[idx])
    assert lazy[5:5].shape == (0, 3, 8, 8)
    mask = torch.arange(len(held)) % 3 == 0
    part = lazy[mask]  # a mask carves a sub-split: still lazy
    assert isinstance(part, LazyImages) and torch.equal(part[:], held[mask])
    with pytest.raises(IndexError):
        lazy[len(held)]


def test_a_channel_conversion_applies_per_sample(files):
    held = _load(files, "imagefolder", "always", channels=1).train.x
    lazy = _load(files, "imagefolder", "never", channels=1).train.x
    assert lazy.shape[1] == 1 and torch.equal(lazy[:], held)


def test_epoch_batches_are_the_global_batches_shared_by_rank():
    order = lambda epoch: torch.randperm(10, generator=torch.Generator().manual_seed(epoch))
    one = EpochBatches(10, 4, 2, order)
    one.set_epoch(3)
    batches = [[k[0] for k in keys] for keys in one]
    perm = order(3).tolist()
    assert batches == [perm[0:4], perm[4:8], perm[8:10]]
    ranks = [EpochBatches(10, 4, 4, order, rank=r, world=2) for r in range(2)]
    for r in ranks:
        r.set_epoch(3)
    shares = [list(r) for r in ranks]  # 2 steps: the lone pair joins the last batch
    assert len(shares[0]) == len(shares[1]) == 2
    for step, (a, b) in enumerate(zip(*shares)):
        positions = sorted(k[2] for k in a + b)
        assert positions == list(range(4 * step, 4 if step == 0 else 10))
        assert all(k[2] % 2 == 0 for k in a) and all(k[2] % 2 == 1 for k in b)
        assert all(k[0] == perm[k[2]] and k[1] == 3 for k in a + b)


def test_ordered_batches_split_by_rank():
    plans = [OrderedBatches(10, 3, rank=r, world=2) for r in range(2)]
    got = [[[k[0] for k in keys] for keys in p] for p in plans]
    assert got == [[[0, 1, 2], [6, 7, 8]], [[3, 4, 5], [9]]]
    assert plans[0].steps == 4 and [len(p) for p in plans] == [2, 2]


def test_augmented_samples_do_not_depend_on_workers(files):
    index = _load(files, "imagefolder", "never").train.x.index
    keys = [(i, 1, p) for p, i in enumerate(range(0, 12, 2))]
    outs = []
    for workers in (0, 2):
        loader = make_loader(SampleDataset(index, "crop_flip", seed=4),
                             [keys[:3], keys[3:]], workers)
        outs.append(torch.cat([x for x, _ in loader]))
    assert torch.equal(outs[0], outs[1])
    plain = torch.stack([torch.from_numpy(index.decode(k[0])) for k in keys])
    assert not torch.equal(outs[0], plain)  # something was cropped or flipped


def test_augment_sample_pads_with_zeros_and_keeps_the_shape():
    x = np.full((1, 8, 8), 200, np.uint8)
    outs = [augment_sample(x, "crop", np.random.default_rng(s)) for s in range(20)]
    assert all(o.shape == x.shape for o in outs)
    assert any((o == 0).any() for o in outs) and all(o.max() == 200 for o in outs)
    ramp = np.tile(np.arange(8, dtype=np.uint8), (1, 8, 1))
    flipped = [augment_sample(ramp, "crop_flip", np.random.default_rng(s)) for s in range(20)]
    assert any(o[0, 4, 1] > o[0, 4, 6] for o in flipped)  # some mirrored


def _student(seed: int = 1) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 16), nn.ReLU(), nn.Linear(16, CLASSES))


class _Teacher(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) * 3


def _kd():
    context = LossContext(num_classes=CLASSES, num_groups=3, group_names=("a", "b", "c"),
                          train_class_counts=[10, 10, 10])
    return build_loss(MitigationSpec(name="kd", alpha=0.5, temperature=2.0), context)


SPEC = TrainingSpec(epochs=2, batch_size=8, lr=0.1, device="cpu", schedule="constant",
                    channels_last=False, progress_every_steps=100)


@pytest.mark.parametrize("workers, ram_mib", [(0, 1024), (2, 0)])
def test_streamed_training_gives_the_in_memory_weights(files, tmp_path, workers, ram_mib):
    """Same batches, same teacher logits (cached in RAM, or spilled to a file): same bits."""
    held = _load(files, "imagefolder", "always").train
    streamed = _load(files, "imagefolder", "never", workers=workers).train
    spec = dataclasses.replace(SPEC, teacher_cache_ram_mib=ram_mib)
    models = [_student(), _student()]
    for model, data in zip(models, (held, streamed)):
        result = train(model, data, spec, _kd(), teacher=_Teacher(), checkpoint_dir=tmp_path /
                       f"{is_streamed(data.x)}")
        assert result.used_teacher_cache and result.epochs_run == 2
    a, b = (m.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(tmp_path.rglob(".teacher-logits-*"))  # a spilled cache leaves no file


def test_streamed_augmented_training_resumes_exactly(files, tmp_path):
    data = _load(files, "imagefolder", "never").train
    spec = dataclasses.replace(SPEC, augment="crop_flip", epochs=3)
    straight, first, resumed = _student(), _student(), _student()
    train(straight, data, spec, _one_hot())
    steps = steps_per_epoch(len(data), spec.batch_size)
    with pytest.raises(Cancelled):  # stopped in epoch 3, after two checkpoints
        train(first, data, spec, _one_hot(), checkpoint_dir=tmp_path,
              should_stop=_after_checks(2 * steps + 1))
    result = train(resumed, data, spec, _one_hot(), checkpoint_dir=tmp_path)
    assert result.resumed_from_epoch == 2 and result.epochs_run == 1
    a, b = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _one_hot():
    context = LossContext(num_classes=CLASSES, num_groups=3, group_names=("a", "b", "c"),
                          train_class_counts=[10, 10, 10])
    return build_loss(MitigationSpec(name="one_hot"), context)


def _after_checks(n: int):
    calls = iter(range(10**6))
    return lambda: next(calls) >= n


@pytest.mark.parametrize("scale", [3.0, 1e7])  # 1e7: beyond float16, kept in float32
def test_a_spilled_teacher_cache_holds_the_ram_cache_values(files, tmp_path, scale):
    x = _load(files, "imagefolder", "never", workers=2).train.x
    teacher = _Teacher()
    teacher.forward = lambda inputs: teacher.net(inputs) * scale  # type: ignore[method-assign]
    ram = TeacherCache.build(teacher, x, batch_size=8, device=torch.device("cpu"))
    spilled = TeacherCache.build(teacher, x, batch_size=8, device=torch.device("cpu"),
                                 ram_bytes=0, spill_dir=tmp_path)
    assert ram.logits is not None and spilled.logits is None and spilled.spilled is not None
    idx = torch.tensor([4, 0, len(x) - 1, 4])
    assert torch.equal(ram[idx], spilled[idx]) and len(spilled) == len(x)
    assert torch.equal(ram[torch.arange(len(x))], spilled[torch.arange(len(x))])
    assert (ram.logits.dtype == torch.float16) == (scale == 3.0)
    assert not list(tmp_path.iterdir())  # the file is unlinked as soon as it is mapped


def test_the_report_records_which_path_ran():
    summary = {"class_names": ["a"], "group_names": ["a"], "input_shape": [3, 8, 8],
               "splits": {}}
    for path in ("streaming", "in_memory"):
        data = DataSummary.from_dict({**summary, "loading": path})
        assert data.loading == path and data.to_dict()["loading"] == path
    assert "loading" not in DataSummary.from_dict(summary).to_dict()  # an older report
    with pytest.raises(ValueError, match="data.loading"):
        DataSummary.from_dict({**summary, "loading": "mmap"})
