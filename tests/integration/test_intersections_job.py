"""A job crossing class with the data's attribute: the report shows every key's groups and
every intersection, judged in one family, on the student and on its ONNX export."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compression.pipeline import run
from compression.spec import parse_spec
from tests.integration.conftest import _bars

pytestmark = pytest.mark.integration


@pytest.fixture
def crossed_job(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 600), ("test", 200)):
        x, y = _bars(n, 4, rng)
        # night is rare, and rarer still for class d: that intersection stays small
        night = rng.random(n) < np.where(y == 3, 0.05, 0.3)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y, class_names=np.array(list("abcd")),
                 group=np.where(night, "night", "day"))
    return parse_spec({
        "name": "crossed", "output_dir": str(tmp_path / "out"),
        "teacher": {"path": str(tmp_path / "unused.pt2")},
        "data": {"source": "npz", "path": str(tmp_path / "train.npz"),
                 "test_path": str(tmp_path / "test.npz"), "holdout_fraction": 0.2,
                 "subgroups": {"by": "class", "also_by": ["attribute"]}},
        "student": {"arch": "tiny_cnn"}, "mitigation": {"name": "one_hot"},
        "training": {"epochs": 2, "batch_size": 32, "lr": 0.05, "seed": 7},
        "guardrails": {"max_drop_vs_one_hot": 0.5, "min_samples": 10,
                       "min_accuracy_by_group": {"class=a & attribute=night": 0.05}},
        "export": {"int8": False}})


def test_the_report_shows_key_groups_and_intersections(crossed_job):
    result = run(crossed_job)
    report = json.loads(result.report_path.read_text())
    groups = report["evaluations"]["student"]["groups"]
    marginals = [g for g in groups if len(g["keys"]) == 1]
    cells = [g for g in groups if g["keys"] == ["class", "attribute"]]
    assert [g["name"] for g in marginals] == ["class=a", "class=b", "class=c", "class=d",
                                              "attribute=day", "attribute=night"]
    assert len(cells) == 8 and cells[0]["name"] == "class=a & attribute=day"
    # every example is in one cell, one class and one attribute value
    assert sum(g["n"] for g in cells) == sum(g["n"] for g in marginals[:4]) == 200
    assert sum(g["n"] for g in marginals[4:]) == 200
    for key_group in marginals[:4]:
        inside = [g for g in cells if g["name"].startswith(key_group["name"] + " & ")]
        assert sum(g["correct"] for g in inside) == key_group["correct"]
    assert report["data"]["group_names"] == [g["name"] for g in cells]  # training's ids

    stages = {s["stage"]: s for s in report["guardrails"]["stages"]}
    assert set(stages) == {"student", "onnx"}
    student = stages["student"]
    assert [g["name"] for g in student["groups"]] == [g["name"] for g in groups]
    small = [g["name"] for g in cells if g["n"] < 10]
    assert small and student["advisory_subgroups"] == small
    # one family: both rules on every group and cell with test examples
    judged = sum(1 for g in groups if g["n"])
    assert student["family_size"] == judged + 1  # + the one floor
    onnx = [c for c in stages["onnx"]["checks"] if c["rule"] == "max_drop_vs_student"]
    assert [c["subgroup"] for c in onnx] == [g["name"] for g in groups if g["n"]]
    assert all(c["b"] is not None for c in onnx)
