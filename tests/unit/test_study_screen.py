"""The study's check of auto's harm screen: holdout verdicts against test verdicts."""

from __future__ import annotations

from bench._study_doc import _screen
from bench._study_screen import harm_screen

LABELS = ["kd a=0.9", "paired_alpha floor", "paired_dro", "group_dro", "logit_adjusted"]
DROP = {"group": "Sandal", "delta": -0.04, "ci": [-0.06, -0.02], "n": 1000, "below": True}


def _row(case: str, method: str, seed: int, below: list) -> dict:
    return {"case": case, "method": method, "seed": seed, "harmed_vs_one_hot": [
        p["group"] for p in below], "paired_vs_one_hot": below + [
        {"group": "Bag", "delta": 0.01, "ci": [-0.01, 0.03], "n": 1000, "below": False}]}


def _auto(case: str, seed: int, shown: list[list[str]], chosen: int) -> dict:
    return {"case": case, "method": "auto", "seed": seed, "selection": {
        "recommended_candidates": True, "chosen_index": chosen,
        "candidates": [{"harm_shown_on": s, "n": 2000} for s in shown]}}


def test_each_candidate_counts_the_four_outcomes_and_names_what_the_holdout_missed():
    # seed 0: kd shown and seen; the floor missed (and shipped); the rest clean on both.
    # seed 1: kd shown but not seen; paired_dro missed; logit_adjusted has no row (skipped).
    test_harm = {(0, "kd a=0.9"), (0, "paired_alpha floor"), (1, "paired_dro")}
    rows = [_row("lt", label, seed, [DROP] if (seed, label) in test_harm else [])
            for seed in (0, 1) for label in LABELS if (seed, label) != (1, "logit_adjusted")]
    rows.append(_row("other", "kd a=0.9", 0, [DROP]))  # no auto cell there: not counted
    runs = [_auto("lt", 0, [["Bag"], [], [], [], []], chosen=1),
            _auto("lt", 1, [["Bag"], [], [], [], []], chosen=3),
            {"case": "lt", "method": "kd a=0.9", "seed": 0}]
    screen = harm_screen(rows, runs)
    assert screen["counts"] == {
        "kd a=0.9": {"both": 1, "holdout_only": 1, "missed": 0, "neither": 0},
        "paired_alpha floor": {"both": 0, "holdout_only": 0, "missed": 1, "neither": 1},
        "paired_dro": {"both": 0, "holdout_only": 0, "missed": 1, "neither": 1},
        "group_dro": {"both": 0, "holdout_only": 0, "missed": 0, "neither": 2},
        "logit_adjusted": {"both": 0, "holdout_only": 0, "missed": 0, "neither": 1}}
    assert [(m["seed"], m["candidate"], m["chosen"]) for m in screen["missed"]] == [
        (0, "paired_alpha floor", True), (1, "paired_dro", False)]
    assert [p["group"] for p in screen["missed"][0]["below"]] == ["Sandal"]
    page = "\n".join(_screen(screen))
    assert "| paired_alpha floor | 0 | 0 | 1 | 1 |" in page
    assert ("- lt seed 0, paired_alpha floor (auto shipped it): Sandal -4.0 [-6.0, -2.0] "
            "(n 1000); holdout n 2000") in page


def test_an_auto_cell_with_its_own_candidates_is_not_a_screen_of_the_recommended_set():
    rows = [_row("lt", label, 0, [DROP]) for label in LABELS]
    own = _auto("lt", 0, [[]] * 5, chosen=0)
    own["selection"]["recommended_candidates"] = False
    assert harm_screen(rows, [own])["missed"] == []
