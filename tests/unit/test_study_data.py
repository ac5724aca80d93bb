"""The study's data set builders: the defocus transform, the minority draw, the digits split."""

from __future__ import annotations

import numpy as np
import pytest

from bench._study_data import (MINORITY_SHARE, _attribute_arrays, gaussian_blur,
                               minority_mask, population_shares, teacher_dataset)


def test_blur_keeps_mass_and_range_and_removes_edges() -> None:
    x = np.zeros((2, 28, 28), dtype=np.uint8)
    x[0, 10:18, 10:18] = 255  # a bright square well inside the frame
    x[1, ::2] = 200  # stripes: fine texture
    out = gaussian_blur(x, sigma=2.0)
    assert out.shape == x.shape and out.dtype == np.uint8
    # light is redistributed, not created or lost, away from the border
    assert abs(int(out[0].sum()) - int(x[0].sum())) < 0.01 * int(x[0].sum())
    # the square's hard edge becomes a ramp
    assert out[0, 14, 9] > 0 and out[0, 14, 10] < 255
    # stripes two pixels apart are wiped out by a 2-pixel blur
    assert out[1, 4:24].std() < 0.05 * x[1, 4:24].std()


def test_blur_of_a_flat_image_is_the_image() -> None:
    x = np.full((1, 8, 8), 90, dtype=np.uint8)
    assert np.array_equal(gaussian_blur(x, sigma=2.0), x)  # border rows renormalised


def test_minority_is_the_share_of_every_class_and_seeded() -> None:
    y = np.repeat(np.arange(10), 540)
    mask = minority_mask(y, MINORITY_SHARE, np.random.default_rng(0))
    assert np.bincount(y[mask], minlength=10).tolist() == [27] * 10
    again = minority_mask(y, MINORITY_SHARE, np.random.default_rng(0))
    other = minority_mask(y, MINORITY_SHARE, np.random.default_rng(1))
    assert np.array_equal(mask, again) and not np.array_equal(mask, other)


def test_the_teacher_that_never_saw_the_minority_trained_on_its_images_before_the_defocus(
        ) -> None:
    rng = np.random.default_rng(0)
    bal = {split: {"x": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                   "y": np.repeat(np.arange(10), n // 10),
                   "class_names": np.array(list("abcdefghij"))}
           for split, n in (("train", 400), ("holdout", 200), ("test", 200))}
    attr = _attribute_arrays(bal, seed=0)
    assert set(attr) == {"train", "holdout", "test"}
    for split, arrays in attr.items():
        blur = arrays["group"] == "blur"
        assert np.array_equal(arrays["y"], bal[split]["y"])
        # the clean rows are fmnist_bal's own images, every defocused row is a changed copy
        assert np.array_equal(arrays["x"][~blur], bal[split]["x"][~blur])
        changed = (arrays["x"][blur] != bal[split]["x"][blur]).reshape(blur.sum(), -1)
        assert changed.any(axis=1).all()
    assert np.bincount(attr["train"]["y"][attr["train"]["group"] == "blur"]).tolist() == [2] * 10
    assert teacher_dataset("fmnist_attr", saw_minority=False) == "fmnist_bal"
    assert teacher_dataset("fmnist_attr", saw_minority=True) == "fmnist_attr"
    with pytest.raises(ValueError, match="no minority"):
        teacher_dataset("fmnist_lt", saw_minority=False)


def test_population_shares_only_for_the_attribute_set() -> None:
    assert population_shares("fmnist_attr") == pytest.approx({"clean": 0.95, "blur": 0.05})
    assert population_shares("fmnist_lt") is None


def test_digits_split_is_stratified_and_disjoint() -> None:
    from bench._study_data import digits_arrays
    arrays = digits_arrays(0)
    train, holdout, test = arrays["train"], arrays["holdout"], arrays["test"]
    counts = [np.bincount(a["y"]) for a in (train, holdout, test)]
    assert sum(c.sum() for c in counts) == 1797
    assert np.all(np.abs(counts[2] / sum(counts) - 0.35) < 0.01)
    assert np.all(np.abs(counts[1] / sum(counts) - 0.15) < 0.01)  # balanced, every class
    rows = {a.tobytes() + bytes([int(y)]) for a, y in zip(train["x"], train["y"])}
    assert not any(a.tobytes() + bytes([int(y)]) in rows for a, y in zip(test["x"], test["y"]))
    assert train["x"].dtype == np.uint8 and train["x"].shape[1:] == (8, 8)
    assert train["x"].max() == 255


def test_every_recommended_auto_candidate_is_a_study_row():
    from bench._study_auto import candidate_methods
    from compression.losses.registry import RECOMMENDED_CANDIDATES

    rows = candidate_methods()
    assert [m.mitigation.name for m in rows] == [c.name for c in RECOMMENDED_CANDIDATES]
    assert [m.mitigation.alpha for m in rows] == [c.alpha for c in RECOMMENDED_CANDIDATES]


def test_fashion_mnist_holdout_is_balanced_and_apart_from_train() -> None:
    from bench._study_data import fmnist_arrays
    arrays = fmnist_arrays(train_size=600, holdout_per_class=30, seed=0)
    train, holdout, test = arrays["train"], arrays["holdout"], arrays["test"]
    assert np.bincount(train["y"]).tolist() == [60] * 10
    assert np.bincount(holdout["y"]).tolist() == [30] * 10
    assert len(test["y"]) == 10000 and test["x"].shape[1:] == (28, 28)
    rows = {x.tobytes() for x in train["x"]}
    assert not any(x.tobytes() in rows for x in holdout["x"])
    again = fmnist_arrays(train_size=600, holdout_per_class=30, seed=0)
    assert np.array_equal(again["holdout"]["x"], holdout["x"])


def test_every_study_set_is_read_as_npz_with_its_own_holdout(tmp_path) -> None:
    from bench._study_data import DATASETS, data_spec
    for name in DATASETS:
        spec = data_spec(name, tmp_path, imbalance=100.0, seed=0)
        assert spec.source == "npz" and spec.holdout_path == str(tmp_path / name / "holdout.npz")
        assert (spec.long_tail.profile != "none") == name.endswith("_lt")
        # auto ranks at the training mix where the holdout oversamples the minority
        assert spec.subgroups.shares == (population_shares(name) or {})
    with pytest.raises(ValueError, match="unknown dataset"):
        data_spec("cifar", tmp_path, imbalance=1.0, seed=0)


def test_overall_difference_pools_examples_or_weights_subgroups_by_their_shares() -> None:
    from bench._study_stats import paired_overall
    from compression.evaluation.stats import tango_interval
    paired = [{"group": "a", "n": 100, "b": 10, "c": 4, "delta": -0.06},
              {"group": "b", "n": 50, "b": 2, "c": 7, "delta": 0.10}]
    pooled = paired_overall(paired)
    low, high = tango_interval(12, 11, 150)
    assert pooled["delta"] == pytest.approx(-1 / 150) and pooled["ci"] == [-high, -low]
    # 0.9 * -0.06 + 0.1 * 0.10, variances 0.81 * (0.14 - 0.0036) / 100 + 0.01 * (0.18 - 0.01) / 50
    weighted = paired_overall(paired, {"a": 0.9, "b": 0.1})
    assert weighted["delta"] == pytest.approx(-0.044)
    assert weighted["ci"] == pytest.approx([-0.044 - 0.066142, -0.044 + 0.066142], abs=1e-5)
