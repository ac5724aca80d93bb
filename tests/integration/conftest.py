import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

TPET = [sys.executable, "-m", "service.cli"]
REPO = Path(__file__).resolve().parents[2]


def _bars(n: int, num_classes: int, rng: np.random.Generator):
    """Class c lights up a horizontal bar at row 2c of an 8x8 image, plus noise."""
    y = np.arange(n) % num_classes
    x = rng.integers(0, 60, size=(n, 8, 8))
    for c in range(num_classes):
        x[y == c, 2 * c, :] += 180
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


@pytest.fixture
def bars_job(tmp_path):
    """Write a tiny npz dataset and a job using it; return a function making job files."""
    rng = np.random.default_rng(0)
    for name, n in (("train", 800), ("test", 200)):
        x, y = _bars(n, 4, rng)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y,
                 class_names=np.array(["a", "b", "c", "d"]))

    def make(**overrides):
        job = {"name": "bars", "output_dir": str(tmp_path / "out"),
               "teacher": {"path": str(tmp_path / "teacher.pt2")},
               "data": {"source": "npz", "path": str(tmp_path / "train.npz"),
                        "test_path": str(tmp_path / "test.npz"), "holdout_fraction": 0.2},
               "student": {"arch": "tiny_cnn"},
               "training": {"epochs": 4, "batch_size": 32, "lr": 0.05}}
        for key, value in overrides.items():
            job[key] = {**job.get(key, {}), **value} if isinstance(value, dict) else value
        path = tmp_path / "job.yaml"
        path.write_text(yaml.safe_dump(job))
        return path

    return make
