"""The study's data sets: Fashion-MNIST (long-tailed, balanced), long-tailed 8x8 digits, and
Fashion-MNIST with a defocused-camera minority as an attribute subgroup.

Fashion-MNIST and its long tail come from the job's own ``data`` settings. The other two are
written once as .npz files (``x``, ``y``, ``class_names`` and, for the attribute set, a
``group`` column) under the study's folder and read through ``data.source: npz``:

- ``digits_lt``: scikit-learn's 8x8 digits, split once (seeded, stratified) into a test set
  of 35% of each class, a balanced holdout of 15% and a training pool of the rest; the job
  makes the pool long-tailed (exp, imbalance 20: with about 90 images a class, imbalance 100
  would leave one tail image). The holdout stays balanced, as a user protecting rare classes
  must give the validation set enough of them to measure: carved from the long-tailed pool it
  would hold 0 to 1 images of each tail class, and no harm to them could be shown there.
- ``fmnist_attr``: the balanced Fashion-MNIST split (``fmnist_bal``: the same train, holdout
  and test images) with a stratified 5% of train and holdout, and 30% of test, replaced by a
  defocused copy (``blur``; the rest ``clean``). Why defocus: a camera out of focus or shaken
  produces it, it wipes out the texture and edges (collars, buttons, prints) that separate
  T-shirt, Shirt, Pullover and Coat while the silhouette survives, and no intensity
  normalisation undoes it (a global brightness or gamma change is largely undone by the
  per-image statistics a BatchNorm network sees). The test split oversamples it so the
  subgroup's accuracy has a tight interval (300 images a class); overall accuracy is
  reweighted to the training mix in the study's tables. The holdout oversamples it too, as a
  user who wants a 5% minority protected must give the validation set enough of it to measure
  (120 of 400 images, against 20 at the training mix): ``auto`` and the holdout-driven
  mitigations decide on it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from compression.data import load_dataset
from compression.spec import DataSpec, LongTailSpec, SubgroupSpec

__all__ = ["DATASETS", "ATTRIBUTE_DATASETS", "BLUR_SIGMA", "MINORITY_SHARE", "TEST_MINORITY_SHARE",
           "gaussian_blur", "minority_mask", "digits_arrays", "data_spec", "teacher_data_spec",
           "prepare_data", "population_shares"]

DATASETS = ("fmnist_lt", "fmnist_bal", "digits_lt", "fmnist_attr")
ATTRIBUTE_DATASETS = ("fmnist_attr",)
BLUR_SIGMA = 2.0  # pixels of a 28-pixel image
MINORITY_SHARE = 0.05  # of train
TEST_MINORITY_SHARE = 0.30  # of holdout and test
DIGITS_TEST_FRACTION = 0.35
DIGITS_HOLDOUT_FRACTION = 0.15
DIGITS_IMBALANCE = 20.0
MINORITY, MAJORITY = "blur", "clean"


def gaussian_blur(x: np.ndarray, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """x: [N, H, W] uint8 -> [N, H, W] uint8, blurred by a separable Gaussian of ``sigma``
    pixels (taps out to 3 sigma; at the border each row of the kernel is renormalised, as a
    lens sees no light from outside the frame)."""
    def matrix(size: int) -> np.ndarray:
        pos = np.arange(size)
        k = np.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
        k[np.abs(pos[:, None] - pos[None, :]) > 3 * sigma] = 0.0
        return k / k.sum(axis=1, keepdims=True)
    rows, cols = matrix(x.shape[1]), matrix(x.shape[2])
    out = np.einsum("ij,njk,lk->nil", rows, x.astype(np.float64), cols)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def minority_mask(y: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """[N] bool: a seeded ``share`` of each class (rounded), so the minority is balanced."""
    mask = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        mask[rng.permutation(members)[:round(share * len(members))]] = True
    return mask


def digits_arrays(seed: int) -> dict[str, dict[str, np.ndarray]]:
    """scikit-learn's 8x8 digits (values 0..16 scaled to 0..255) as a train pool, a holdout
    of 15% and a test set of 35% of each class."""
    from sklearn.datasets import load_digits  # bench-only dependency (make study)
    digits = load_digits()
    x = np.rint(digits.images * (255 / 16)).astype(np.uint8)  # [N, 8, 8]
    y = digits.target.astype(np.int64)
    is_test = minority_mask(y, DIGITS_TEST_FRACTION, np.random.default_rng([seed, 1]))
    rest = np.flatnonzero(~is_test)
    is_holdout = np.zeros(len(y), dtype=bool)
    is_holdout[rest[minority_mask(y[rest], DIGITS_HOLDOUT_FRACTION / (1 - DIGITS_TEST_FRACTION),
                                  np.random.default_rng([seed, 3]))]] = True
    names = np.array([str(c) for c in range(10)])
    return {split: {"x": x[keep], "y": y[keep], "class_names": names}
            for split, keep in (("train", ~is_test & ~is_holdout), ("holdout", is_holdout),
                                ("test", is_test))}


def _attribute_arrays(bal: DataSpec, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The fmnist_bal splits with a defocused minority, as npz arrays per split."""
    dataset = load_dataset(bal)
    out = {}
    shares = (("train", MINORITY_SHARE), ("holdout", TEST_MINORITY_SHARE),
              ("test", TEST_MINORITY_SHARE))
    for i, (split, share) in enumerate(shares):
        s = getattr(dataset, split)
        x, y = s.x[:, 0].numpy().copy(), s.y.numpy()
        blur = minority_mask(y, share, np.random.default_rng([seed, 2, i]))
        x[blur] = gaussian_blur(x[blur])
        out[split] = {"x": x, "y": y, "group": np.where(blur, MINORITY, MAJORITY),
                      "class_names": np.array(dataset.class_names)}
    keep = out["train"]["group"] == MAJORITY  # what a teacher that never saw the minority had
    out["train_clean"] = {k: v[keep] if k != "class_names" else v
                          for k, v in out["train"].items()}
    return out


def _write(folder: Path, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for split, members in arrays.items():
        tmp = folder / f"{split}.tmp.npz"
        np.savez(tmp, **members)
        tmp.replace(folder / f"{split}.npz")  # whole files only: parallel readers never see half


def prepare_data(dataset: str, data_dir: Path, *, balanced_max_train: int, seed: int) -> None:
    """Write the dataset's npz files unless they exist (Fashion-MNIST sets need none)."""
    folder = data_dir / dataset
    if dataset not in ("digits_lt", "fmnist_attr") or (folder / "test.npz").exists():
        return
    if dataset == "digits_lt":
        _write(folder, digits_arrays(seed))
    else:
        _write(folder, _attribute_arrays(DataSpec(max_train=balanced_max_train, seed=seed), seed))


def data_spec(dataset: str, data_dir: Path, *, imbalance: float, lt_max_train: int,
              balanced_max_train: int, seed: int) -> DataSpec:
    """The student's data for ``dataset``; the split is fixed by ``seed`` for every run."""
    folder = data_dir / dataset
    if dataset == "fmnist_lt":
        return DataSpec(max_train=lt_max_train, seed=seed,
                        long_tail=LongTailSpec(profile="exp", imbalance=imbalance))
    if dataset == "fmnist_bal":
        return DataSpec(max_train=balanced_max_train, seed=seed)
    if dataset == "digits_lt":
        return DataSpec(source="npz", path=str(folder / "train.npz"),
                        holdout_path=str(folder / "holdout.npz"),
                        test_path=str(folder / "test.npz"), seed=seed,
                        long_tail=LongTailSpec(profile="exp", imbalance=DIGITS_IMBALANCE))
    if dataset == "fmnist_attr":
        return DataSpec(source="npz", path=str(folder / "train.npz"),
                        holdout_path=str(folder / "holdout.npz"),
                        test_path=str(folder / "test.npz"), seed=seed,
                        subgroups=SubgroupSpec(by="attribute"))
    raise ValueError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")


def teacher_data_spec(student: DataSpec, saw_minority: bool) -> DataSpec:
    """The teacher's data: the student's, or for a teacher that never saw the minority the
    same splits with the minority's training images removed (holdout and test unchanged)."""
    if saw_minority:
        return student
    return dataclasses.replace(student, path=student.path.replace("train.npz", "train_clean.npz"))


def population_shares(dataset: str) -> dict[str, float] | None:
    """The subgroup mix of the training data, for overall accuracy at that mix (attribute
    sets, whose test split oversamples the minority); None: the test split's own mix."""
    if dataset in ATTRIBUTE_DATASETS:
        return {MAJORITY: 1 - MINORITY_SHARE, MINORITY: MINORITY_SHARE}
    return None
