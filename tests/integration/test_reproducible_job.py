"""The same job and seed give the same report figures, whatever ran before in the process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compression.pipeline import run
from compression.spec import parse_spec
from tests.integration.conftest import _bars

pytestmark = pytest.mark.integration

# figures that measure the machine, not the model
_TIMINGS = {"seconds", "samples_per_s", "stage_seconds", "latency_ms", "median_ms", "max_ms",
            "files", "environment",
            "spec", "output_dir"}


def _figures(value):
    """The report without its timings, hashes and paths."""
    if isinstance(value, dict):
        return {k: _figures(v) for k, v in value.items() if k not in _TIMINGS}
    if isinstance(value, list):
        return [_figures(v) for v in value]
    return value


@pytest.fixture
def job(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 600), ("test", 200)):
        x, y = _bars(n, 4, rng)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y, class_names=np.array(list("abcd")))

    def make(out: str):
        return parse_spec({
            "name": "again", "output_dir": str(tmp_path / out),
            "teacher": {"path": str(tmp_path / "unused.pt2")},
            "data": {"source": "npz", "path": str(tmp_path / "train.npz"),
                     "test_path": str(tmp_path / "test.npz"), "holdout_fraction": 0.2},
            "student": {"arch": "tiny_cnn"}, "mitigation": {"name": "one_hot"},
            "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 7},
            "guardrails": {"max_drop_vs_one_hot": 0.05, "min_samples": 10},
            "export": {"int8": False}})
    return make


def test_a_job_run_twice_gives_the_same_report_figures(job):
    first = run(job("first"))
    torch.rand(12345)  # a different global random state must not matter
    torch.manual_seed(99)
    second = run(job("second"))
    a, b = (json.loads(r.report_path.read_text()) for r in (first, second))
    assert "one_hot" in a["evaluations"] and a["training"]["final_loss"] > 0
    assert _figures(a) == _figures(b)
