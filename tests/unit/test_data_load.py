import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compression.data import describe, load_dataset
from compression.errors import InvalidInput
from compression.spec import DataSpec, LongTailSpec, SubgroupSpec

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def npz(path: Path, counts, offset=0, **extra) -> str:
    """Labels with ``counts`` per class; sample i's pixels [0,0] / [0,1] encode offset + i."""
    y = np.repeat(np.arange(len(counts)), counts)
    ids = offset + np.arange(len(y))
    x = np.zeros((len(y), 2, 2), np.uint8)
    x[:, 0, 0], x[:, 0, 1] = ids % 256, ids // 256
    np.savez(path, x=x, y=y, **extra)
    return str(path)


def ids(split) -> list[int]:
    return (split.x[:, 0, 0, 0].long() + 256 * split.x[:, 0, 0, 1].long()).tolist()


def spec(tmp_path, train=(40, 40, 40), test=(10, 10, 10), **kw) -> DataSpec:
    return DataSpec(source="npz", path=npz(tmp_path / "train.npz", train),
                    test_path=npz(tmp_path / "test.npz", test, offset=1000), **kw)


def counts(split, n=3) -> list[int]:
    return split.y.bincount(minlength=n).tolist()


def test_max_train_then_long_tail_then_holdout(tmp_path):
    data = load_dataset(spec(tmp_path, max_train=60, max_test=6,
                             long_tail=LongTailSpec(profile="exp", imbalance=4.0)))
    # 60 of [40]*3 -> [20]*3; exp IF 4 -> [20, 10, 5]; 10% holdout (half up, >= 1) -> [2, 1, 1]
    assert counts(data.train) == [18, 9, 4]
    assert counts(data.holdout) == [2, 1, 1]
    assert counts(data.test) == [2, 2, 2]
    assert set(ids(data.train)).isdisjoint(ids(data.holdout))
    assert all(i < 120 for i in ids(data.train) + ids(data.holdout))
    assert all(i >= 1000 for i in ids(data.test))
    assert data.train.x.dtype == torch.uint8 and data.train.x.is_contiguous()
    assert data.train.y.dtype == torch.int64 and data.train.group.dtype == torch.int64


def test_long_tail_without_max_train(tmp_path):
    data = load_dataset(spec(tmp_path, long_tail=LongTailSpec(profile="step", imbalance=8.0)))
    assert counts(data.train) + counts(data.holdout) == [36, 36, 4, 4, 4, 1]  # [40, 40, 5]


def test_same_spec_same_tensors_other_seed_other_sample(tmp_path):
    s = spec(tmp_path, max_train=50, max_test=9, long_tail=LongTailSpec("exp", 3.0))
    a, b = load_dataset(s), load_dataset(s)
    for name in ("train", "holdout", "test"):
        for field in ("x", "y", "group"):
            assert torch.equal(getattr(getattr(a, name), field), getattr(getattr(b, name), field))
    c = load_dataset(dataclasses.replace(s, seed=1))
    assert counts(c.train) == counts(a.train) and ids(c.train) != ids(a.train)


def test_holdout_path_is_used_instead_of_carving(tmp_path):
    s = spec(tmp_path, holdout_path=npz(tmp_path / "hold.npz", (1, 2, 3), offset=500))
    data = load_dataset(s)
    assert counts(data.train) == [40, 40, 40] and counts(data.holdout) == [1, 2, 3]
    assert min(ids(data.holdout)) == 500


def test_carving_needs_a_class_with_two_samples(tmp_path):
    with pytest.raises(InvalidInput, match="cannot carve a holdout from .*train.npz"):
        load_dataset(spec(tmp_path, train=(1, 1), test=(1, 1)))


def test_channels_conversion(tmp_path):
    rgb = np.zeros((2, 2, 2, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 150, 200
    np.savez(tmp_path / "rgb.npz", x=rgb, y=np.array([0, 0]))
    s = DataSpec(source="npz", path=str(tmp_path / "rgb.npz"), test_path=str(tmp_path / "rgb.npz"),
                 channels=1)
    # 100*.299 + 150*.587 + 200*.114 = 140.75, rounded to 141
    assert load_dataset(s).test.x.unique().tolist() == [141]
    gray = load_dataset(spec(tmp_path, channels=3))
    assert gray.input_shape == (3, 2, 2)
    assert torch.equal(gray.train.x[:, 0], gray.train.x[:, 2])


def test_train_and_test_shapes_must_agree(tmp_path):
    np.savez(tmp_path / "big.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]))
    s = DataSpec(source="npz", path=npz(tmp_path / "train.npz", (2, 2)),
                 test_path=str(tmp_path / "big.npz"))
    with pytest.raises(InvalidInput, match=r"big.npz are 1x3x3.*train.npz are 1x2x2"):
        load_dataset(s)
    with pytest.raises(InvalidInput, match="image_size .*train.npz"):
        load_dataset(spec(tmp_path, image_size=8))


def test_frequency_groups_follow_final_train_counts(tmp_path):
    data = load_dataset(spec(tmp_path, long_tail=LongTailSpec("exp", 16.0),
                             subgroups=SubgroupSpec(by="frequency")))
    assert counts(data.train) == [36, 9, 1]  # [40, 10, floor(2.5)] minus holdout [4, 1, 1]
    assert data.group_names == ("head", "medium", "tail")
    for split in (data.train, data.holdout, data.test):
        assert torch.equal(split.group, torch.tensor([0, 1, 2])[split.y])


def test_map_groups(tmp_path):
    data = load_dataset(spec(tmp_path, subgroups=SubgroupSpec(by="map", mapping={
        "0": "b", "1": "a", "2": "b"})))
    assert data.group_names == ("a", "b")
    assert torch.equal(data.test.group, torch.tensor([1, 0, 1])[data.test.y])


def test_attribute_groups_cover_all_splits(tmp_path):
    s = DataSpec(source="npz", path=npz(tmp_path / "train.npz", (2, 2), group=np.array(
        ["m", "f", "m", "f"])), test_path=npz(tmp_path / "test.npz", (1, 1), group=np.array(
        ["x", "m"])), holdout_path=npz(tmp_path / "h.npz", (1,), group=np.array(["f"])),
        subgroups=SubgroupSpec(by="attribute"))
    data = load_dataset(s)
    assert data.group_names == ("f", "m", "x")
    assert data.train.group.tolist() == [1, 0, 1, 0]
    assert data.test.group.tolist() == [2, 1] and data.holdout.group.tolist() == [0]
    with pytest.raises(InvalidInput, match="test.npz has no group values"):
        load_dataset(spec(tmp_path, subgroups=SubgroupSpec(by="attribute")))


def test_describe(tmp_path):
    data = load_dataset(spec(tmp_path, train=(10, 3), test=(2, 1)))
    assert describe(data) == {
        "class_names": ["0", "1"], "group_names": ["0", "1"], "input_shape": [1, 2, 2],
        "splits": {
            "train": {"size": 11, "class_counts": {"0": 9, "1": 2},
                      "group_counts": {"0": 9, "1": 2}},
            "holdout": {"size": 2, "class_counts": {"0": 1, "1": 1},
                        "group_counts": {"0": 1, "1": 1}},
            "test": {"size": 3, "class_counts": {"0": 2, "1": 1},
                     "group_counts": {"0": 2, "1": 1}}}}


def test_imagefolder_and_manifest_sources(tmp_path):
    for split, n in (("train", 3), ("test", 1)):
        for cls, value in (("cat", 50), ("dog", 200)):
            for i in range(n):
                (tmp_path / split / cls).mkdir(parents=True, exist_ok=True)
                Image.new("L", (5, 7), value).save(tmp_path / split / cls / f"{i}.png")
    data = load_dataset(DataSpec(source="imagefolder", path=str(tmp_path / "train"),
                                 test_path=str(tmp_path / "test"), image_size=4, channels=3))
    assert data.class_names == ("cat", "dog") and data.input_shape == (3, 4, 4)
    assert counts(data.train, 2) == [2, 2] and counts(data.holdout, 2) == [1, 1]
    assert data.test.x[data.test.y == 1].unique().tolist() == [200]

    (tmp_path / "m.csv").write_text("path,label\ntrain/cat/0.png,cat\ntrain/dog/0.png,dog\n"
                                    "train/dog/1.png,dog\n")
    data = load_dataset(DataSpec(source="manifest", path=str(tmp_path / "m.csv"),
                                 test_path=str(tmp_path / "m.csv")))
    assert data.input_shape == (1, 7, 5) and data.test.y.tolist() == [0, 1, 1]


def test_fashion_mnist_rejects_holdout_path(tmp_path):
    with pytest.raises(InvalidInput, match="holdout_path .*fashion-mnist"):
        load_dataset(DataSpec(path=str(FMNIST), holdout_path=str(tmp_path / "h.npz")))


@pytest.mark.skipif(not FMNIST.is_dir(), reason="dataset-fashion-mnist is not installed "
                    "(/usr/share/datasets/fashion-mnist is missing)")
def test_fashion_mnist_real_files_small():
    data = load_dataset(DataSpec(max_train=200, max_test=100, seed=3,
                                 subgroups=SubgroupSpec(by="frequency")))
    assert data.class_names[0] == "T-shirt/top" and data.class_names[9] == "Ankle boot"
    assert data.input_shape == (1, 28, 28)
    assert counts(data.train, 10) == [18] * 10 and counts(data.holdout, 10) == [2] * 10
    assert counts(data.test, 10) == [10] * 10
    assert data.train.x.float().mean() > 10  # real images, not zeros
