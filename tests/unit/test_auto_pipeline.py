"""auto and the harm probe through the real pipeline, on a tiny bars data set."""

import json
from pathlib import Path

import numpy as np
import pytest

from compression.errors import InvalidInput
from compression.pipeline import run
from compression.spec import parse_spec
from compression.teacher_training import TeacherRecipe, train_teacher
from tests.integration.conftest import _bars

pytestmark = pytest.mark.integration  # the whole pipeline, about 10 s on an idle core


@pytest.fixture
def job(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 320), ("test", 120)):
        x, y = _bars(n, 4, rng)
        np.savez(tmp_path / f"{name}.npz", x=x, y=y, class_names=np.array(list("abcd")))
    spec = {"name": "auto", "output_dir": str(tmp_path / "out"),
            "teacher": {"path": str(tmp_path / "teacher.pt2")},
            "data": {"source": "npz", "path": str(tmp_path / "train.npz"),
                     "test_path": str(tmp_path / "test.npz"), "holdout_fraction": 0.25},
            "student": {"arch": "tiny_cnn", "width": 0.5},
            "training": {"epochs": 1, "batch_size": 32, "lr": 0.05, "seed": 3},
            "guardrails": {"min_samples": 10, "max_drop_vs_student": None},
            "export": {"onnx": False, "int8": False, "tensorrt": "off"}}
    train_teacher(parse_spec({**spec, "mitigation": {"name": "one_hot"}}),
                  TeacherRecipe(arch="tiny_cnn", epochs=1), tmp_path / "teacher.pt2")
    return spec


def test_auto_runs_the_probe_judges_harm_and_reports_why_and_at_what_cost(job):
    # candidates train 1 epoch of 2: they are judged against a one-hot student as short
    job["training"] = {**job["training"], "epochs": 2}
    job["mitigation"] = {"name": "auto", "selection_epochs": 1, "candidates": [
        {"name": "kd", "alpha": 0.9},
        {"name": "paired_dro", "alpha": 0.9, "params": {"probe_folds": 2}}]}
    result = run(parse_spec(job))
    report = json.loads(result.report_path.read_text())
    selection = report["selection"]
    assert selection["cost"]["candidates_trained"] == 2
    assert selection["cost"]["probe_runs"] == 4 and selection["cost"]["epochs_total"] == 7
    assert selection["cost"]["one_hot_reference_runs"] == 1
    assert "select_reference_one_hot" in report["stage_seconds"]
    assert [c["name"] for c in selection["candidates"]] == ["kd", "paired_dro"]
    assert all(isinstance(c["harm_shown_on"], list) for c in selection["candidates"])
    assert selection["reason"] and "one_hot" in report["evaluations"]  # baseline trained
    assert "harm_probe_1_distilled" in report["stage_seconds"]
    card = (result.output_dir / "model_card.md").read_text()
    assert "Chosen by `auto` on holdout" in card
    assert "4 probe runs and a one-hot reference trained" in card
    holdout = report["data"]["splits"]["holdout"]["group_counts"]
    power = selection["holdout_power"]
    assert [(p["subgroup"], p["n"]) for p in power] == list(holdout.items())
    assert all(0 < p["min_detectable_drop"] < 1 for p in power)  # about 20 images a class
    assert "cannot show harm" not in card
    if selection["chosen"] == "paired_dro":
        probe = report["training"]["loss_state"]["probe"]
        assert probe["harm_evidence"]["folds"] == 2
        n = sum(g["n"] for g in probe["harm_evidence"]["groups"])
        assert n == report["data"]["splits"]["train"]["size"] + \
            report["data"]["splits"]["holdout"]["size"]  # every example counted once


def test_candidates_trained_in_full_make_the_chosen_one_the_student(job):
    import torch
    from safetensors.torch import load_file

    job["mitigation"] = {"name": "auto", "candidates": [{"name": "kd", "alpha": 0.9},
                                                        {"name": "one_hot"}]}
    result = run(parse_spec(job))
    report = json.loads(result.report_path.read_text())
    selection = report["selection"]
    cost = selection["cost"]
    assert cost["chosen_run_is_student"] and cost["epochs_each"] == 1
    assert cost["one_hot_reference_runs"] == 0  # the full-length baseline is the reference
    assert "select_reference_one_hot" not in report["stage_seconds"]
    index, name = selection["chosen_index"], selection["chosen"]
    assert not (result.output_dir / "checkpoints" / "student").exists()  # not trained again
    candidate = torch.load(result.output_dir / "checkpoints" / f"candidate_{index}_{name}"
                           / "last.pt", weights_only=True)["model"]
    shipped = load_file(str(result.output_dir / "student.safetensors"))
    assert shipped.keys() <= candidate.keys() and shipped
    for key, value in shipped.items():
        torch.testing.assert_close(value, candidate[key].cpu(), rtol=0, atol=0)


def test_a_holdout_too_small_to_show_harm_is_named_in_the_report_and_the_card(job):
    job["data"] = {**job["data"], "holdout_fraction": 0.03}  # 2 images a class
    job["mitigation"] = {"name": "auto", "candidates": [{"name": "one_hot"}]}
    result = run(parse_spec(job))
    report = json.loads(result.report_path.read_text())
    power = report["selection"]["holdout_power"]
    assert [p["n"] for p in power] == [2, 2, 2, 2]
    assert all(p["min_detectable_drop"] is None for p in power)
    card = (result.output_dir / "model_card.md").read_text()
    assert ("The holdout cannot show harm on 4 subgroup(s): a (n=2), b (n=2), c (n=2), d (n=2)"
            in card)


def test_a_reference_floor_reads_the_baseline_on_half_the_holdout_and_moves_every_epoch(job):
    job["training"] = {**job["training"], "epochs": 2}
    floor = {"name": "paired_alpha", "alpha": 0.9,
             "params": {"probe_folds": 2, "reference_floor": True}}
    job["mitigation"] = {"name": "auto", "candidates": [floor]}
    result = run(parse_spec(job))
    report = json.loads(result.report_path.read_text())
    # the whole-split reference is the job's one-hot baseline, trained once
    assert report["selection"]["cost"]["probe_runs"] == 4
    checkpoints = result.output_dir / "checkpoints"
    # cross-fitted: the floor trains on each half of the holdout, the probe is shared
    assert sorted(p.name for p in checkpoints.iterdir()) == [
        "candidate_0_paired_alpha", "candidate_0_paired_alpha_other_half", "one_hot",
        next(checkpoints.glob("probe_*")).name]
    assert len(list(next(checkpoints.glob("probe_*")).iterdir())) == 4  # the folds alone
    assert report["selection"]["cost"]["cross_fit_runs"] == 1
    card = (result.output_dir / "model_card.md").read_text()
    assert "(and 1 fitted to the other holdout half) and 4 probe runs" in card
    state = report["training"]["loss_state"]
    floors = state["floors"]
    # the student is the floor fitted to half 0; auto judged the pair out of fold
    holdout = report["data"]["splits"]["holdout"]["size"]
    judged = report["selection"]["candidates"][0]
    assert floors["holdout_half"] == 0 and sum(floors["n"]) == holdout // 2
    assert judged["n"] == holdout and judged["judged_on"] == "holdout, out of fold"
    assert state["updates"] == 2 and len(state["holdout_accuracy"]) == 4
    assert 0 <= floors["overall"] <= 1
    assert all(0 <= m <= 7 for m in state["floor_multipliers"])  # max_weight 8


def test_shares_rank_auto_at_the_population_mix_and_a_misnamed_share_stops_the_job(job):
    job["mitigation"] = {"name": "auto", "candidates": [{"name": "kd", "alpha": 0.9},
                                                        {"name": "one_hot"}]}
    job["data"]["subgroups"] = {"shares": {"a": 0.7, "b": 0.1, "c": 0.1, "e": 0.1}}
    with pytest.raises(InvalidInput, match=r"names \['e'\], which the data has not") as info:
        run(parse_spec(job))
    assert any("no share for ['d']" in p for p in info.value.problems)
    assert not (Path(job["output_dir"]) / "checkpoints").exists()  # refused before training
    job["data"]["subgroups"] = {"shares": {"a": 0.7, "b": 0.1, "c": 0.1, "d": 0.1}}
    selection = json.loads(run(parse_spec(job)).report_path.read_text())["selection"]
    assert selection["ranked_at"] == "subgroups.shares"
    assert all(0 <= c["population_accuracy"] <= 1 for c in selection["candidates"])


def test_a_one_hot_student_is_its_own_baseline_trained_once(job):
    job["mitigation"] = {"name": "one_hot"}
    job["guardrails"] = {**job["guardrails"], "max_drop_vs_one_hot": 0.05}
    result = run(parse_spec(job))
    report = json.loads(result.report_path.read_text())
    assert sorted(p.name for p in (result.output_dir / "checkpoints").iterdir()) == ["one_hot"]
    assert report["training"]["epochs_run"] == 1  # the run itself, not a resumed copy
    student, baseline = (report["evaluations"][k] for k in ("student", "one_hot"))
    for key in ("overall", "groups", "per_class", "confusion"):
        assert student[key] == baseline[key]
